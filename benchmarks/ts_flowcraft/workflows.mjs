// The benchmark workloads as TypeScript Flowcraft blueprints (the same shapes as benchmarks/workloads.py):
//   chain10 : s0 -> s1 -> ... -> s9                                  (10 nodes)
//   diamond8: start -> b0..b7 (parallel) -> join (all 8) -> end       (11 nodes)
// Every node does the same trivial work as ours: yield to the event loop once, return input + 1. The TS
// engine hands an all-join the last arriving predecessor's output (not a dict by predecessor), so the join
// returns its input + 1 too; the harness checks the chain's final value and, for every run, that each node
// left an output.

const step = async ({ input }) => {
  await new Promise(setImmediate)
  return { output: typeof input === 'number' ? input + 1 : 1 }
}

export const registry = { step }

function chain(length) {
  const nodes = []
  const edges = []
  for (let i = 0; i < length; i++) {
    nodes.push({ id: `s${i}`, uses: 'step' })
    if (i > 0) edges.push({ source: `s${i - 1}`, target: `s${i}` })
  }
  return { id: `chain${length}`, metadata: { version: '1' }, nodes, edges }
}

function diamond(width) {
  const nodes = [{ id: 'start', uses: 'step' }]
  const edges = []
  for (let i = 0; i < width; i++) {
    nodes.push({ id: `b${i}`, uses: 'step' })
    edges.push({ source: 'start', target: `b${i}` })
    edges.push({ source: `b${i}`, target: 'join' })
  }
  nodes.push({ id: 'join', uses: 'step', config: { joinStrategy: 'all' } })
  nodes.push({ id: 'end', uses: 'step' })
  edges.push({ source: 'join', target: 'end' })
  return { id: `diamond${width}`, metadata: { version: '1' }, nodes, edges }
}

export const blueprints = { chain10: chain(10), diamond8: diamond(8) }

// workload -> [nodes per run, terminal node, its expected output or null when not checked]
export const expectations = { chain10: [10, 's9', 10], diamond8: [11, 'end', null] }
