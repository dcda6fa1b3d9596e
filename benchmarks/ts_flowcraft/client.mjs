// The TS peer's client, driven by the harness over stdin/stdout, one JSON object per line each way:
//   {"cmd": "batch", "workload": "chain10", "runs": 500}   -> submit all at once, await all
//   {"cmd": "singles", "workload": "chain10", "runs": 30}  -> one at a time, each awaited before the next
// Answers {"ok": true, "submitted": s, "completed": s, "observed": s, "latencies_ms": [...]} (epoch seconds)
// or {"ok": false, "error": "..."}.
//
// A run starts as the adapter's documented client does (HSET workflow:state:<run> blueprintId/Version, then
// Queue.addBulk of the start nodes). Its completion is the adapter's SET of workflow:status:<run>, seen
// through a keyspace notification (the harness turns on `notify-keyspace-events K$` for these trials)
// instead of the example's 500 ms GET loop, so waiting adds no polling load. After each phase every run's
// status is read back (MGET) and checked: completed, one output per node, the chain's final value.
import { createInterface } from 'node:readline'
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { Queue } from 'bullmq'
import { analyzeBlueprint } from 'flowcraft'
import IORedis from 'ioredis'
import { blueprints, expectations } from './workflows.mjs'

const url = process.env.FC_REDIS_URL
const timeoutMs = Number(process.env.FC_TIMEOUT_MS || 600000)
const redis = new IORedis(url, { maxRetriesPerRequest: null, lazyConnect: true })
const sub = new IORedis(url, { maxRetriesPerRequest: null, lazyConnect: true })
await redis.connect() // connect first: a PSUBSCRIBE before ioredis' ready check can fail
await sub.connect()
const queue = new Queue(process.env.FC_QUEUE, { connection: redis })
await queue.waitUntilReady()

const now = () => (performance.timeOrigin + performance.now()) / 1000
const prefix = `__keyspace@${redis.options.db || 0}__:workflow:status:`
const waiters = new Map() // run id -> {resolve, done (epoch s)}
sub.on('pmessage', (_pattern, channel, event) => {
  if (event !== 'set') return
  const waiter = waiters.get(channel.slice(prefix.length))
  if (waiter && waiter.done === undefined) {
    waiter.done = now()
    waiter.resolve()
  }
})
await sub.psubscribe(`${prefix}*`)

function expect(runId) {
  const waiter = {}
  waiter.finished = new Promise((resolve) => (waiter.resolve = resolve))
  waiters.set(runId, waiter)
  return waiter
}

async function submit(blueprint, startNodeIds, runId) {
  await redis.hset(`workflow:state:${runId}`, 'blueprintId', JSON.stringify(blueprint.id),
    'blueprintVersion', JSON.stringify(blueprint.metadata.version))
  await queue.addBulk(startNodeIds.map((nodeId) => ({
    name: 'executeNode', data: { runId, blueprintId: blueprint.id, nodeId },
  })))
}

function within(promise, ms) {
  let timer
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`runs did not finish within ${ms / 1000} s`)), ms)
  })
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer))
}

async function check(workload, runIds) {
  const [nodes, terminal, expected] = expectations[workload]
  for (let i = 0; i < runIds.length; i += 200) {
    const chunk = runIds.slice(i, i + 200)
    const values = await redis.mget(chunk.map((id) => `workflow:status:${id}`))
    values.forEach((value, j) => {
      const result = value ? JSON.parse(value) : { status: 'missing' }
      if (result.status !== 'completed') {
        throw new Error(`run ${chunk[j]} ended ${result.status}: ${result.reason ?? ''}`)
      }
      const context = result.payload.context
      const outputs = Object.keys(context).filter((key) => key.startsWith('_outputs.')).length
      const output = context[`_outputs.${terminal}`]
      if (outputs !== nodes || (expected !== null && output !== expected)) {
        throw new Error(`run ${chunk[j]}: ${outputs} node outputs, final ${output}; expected ${nodes}, ${expected}`)
      }
    })
  }
}

async function batch(workload, runs) {
  const blueprint = blueprints[workload]
  const startNodeIds = analyzeBlueprint(blueprint).startNodeIds
  const runIds = Array.from({ length: runs }, () => randomUUID())
  const pending = runIds.map((id) => expect(id))
  const submitted = now()
  await Promise.all(runIds.map((id) => submit(blueprint, startNodeIds, id)))
  await within(Promise.all(pending.map((w) => w.finished)), timeoutMs)
  const observed = now()
  await check(workload, runIds)
  const completed = Math.max(...pending.map((w) => w.done))
  runIds.forEach((id) => waiters.delete(id))
  return { submitted, completed, observed }
}

async function singles(workload, runs) {
  const blueprint = blueprints[workload]
  const startNodeIds = analyzeBlueprint(blueprint).startNodeIds
  const latencies = []
  const runIds = []
  for (let i = 0; i < runs; i++) {
    const runId = randomUUID()
    const waiter = expect(runId)
    const started = now()
    await submit(blueprint, startNodeIds, runId)
    await within(waiter.finished, timeoutMs)
    latencies.push((waiter.done - started) * 1000)
    runIds.push(runId)
    waiters.delete(runId)
  }
  await check(workload, runIds)
  return { latencies_ms: latencies }
}

const commands = { batch, singles }
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const { cmd, workload, runs } = JSON.parse(line)
  let answer
  try {
    answer = { ok: true, ...(await commands[cmd](workload, runs)) }
  } catch (error) {
    answer = { ok: false, error: String(error?.message ?? error) }
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`)
}
await queue.close()
sub.disconnect()
redis.disconnect()
