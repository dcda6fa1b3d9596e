// One TS Flowcraft worker process: the published BullMQAdapter on the harness's Redis.
// Env: FC_REDIS_URL (redis://host:port/db), FC_QUEUE (queue name), FC_CONCURRENCY (BullMQ worker
// concurrency; the adapter hard-codes 5, the harness sets the same jobs-in-flight as our workers).
// Prints READY_MARKER once the BullMQ worker is connected; SIGTERM closes it gracefully.
import { BullMQAdapter, RedisCoordinationStore } from '@flowcraft/bullmq-adapter'
import { NullLogger } from 'flowcraft'
import IORedis from 'ioredis'
import { blueprints, registry } from './workflows.mjs'

const READY_MARKER = 'ts-flowcraft worker ready'

const redis = new IORedis(process.env.FC_REDIS_URL, { maxRetriesPerRequest: null })
const adapter = new BullMQAdapter({
  connection: redis,
  queueName: process.env.FC_QUEUE,
  coordinationStore: new RedisCoordinationStore(redis),
  // the adapter logs every job at info level by default; a user measuring throughput would silence it
  runtimeOptions: { registry, blueprints, logger: new NullLogger() },
})
adapter.start()
const bullWorker = adapter.worker // TS-private, reachable at runtime: the only way to set concurrency
if (process.env.FC_CONCURRENCY) bullWorker.concurrency = Number(process.env.FC_CONCURRENCY)
await bullWorker.waitUntilReady()
console.log(`${READY_MARKER} pid=${process.pid} concurrency=${bullWorker.concurrency}`)

let closing = false
async function shutdown() {
  if (closing) return
  closing = true
  try {
    await adapter.close()
    await redis.quit()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
