// src/ring.ts on cases that tests/editors/test_vscode.py writes (tests/editors/ring_cases.py),
// under plain Node:  node out/test/ring-cases.js CASES.json RESULT.json
// The judging is in Python, the same for both shims.
import * as fs from 'fs';
import { Ring, RingOptions, similarity } from '../src/ring';

type Op = ['pick', string[], string] | ['context', string] | ['similarity', string[], string[]];

interface Scenario {
    opts: { chunks?: number; chunk_lines?: number };
    ops: Op[];
}

const [casesPath, resultPath] = process.argv.slice(2);
const input = JSON.parse(fs.readFileSync(casesPath, 'utf8')) as { scenarios: Scenario[] };
const scenarios = input.scenarios.map((s) => {
    const opts: Partial<RingOptions> = {};
    if (s.opts.chunks !== undefined) {
        opts.chunks = s.opts.chunks;
    }
    if (s.opts.chunk_lines !== undefined) {
        opts.chunkLines = s.opts.chunk_lines;
    }
    const ring = new Ring(opts);
    const answers = s.ops.map((op) => {
        if (op[0] === 'pick') {
            const added = ring.pick(op[1], op[2]);
            return typeof added === 'string' ? { why: added } : { added: added.filename };
        }
        if (op[0] === 'context') {
            return ring.context(op[1]).map((c) => [c.filename, c.text]);
        }
        return similarity(op[1], op[2]);
    });
    return { answers, evicted: ring.evicted };
});
fs.writeFileSync(resultPath, JSON.stringify({ scenarios }));
