// src/window.ts on cases that tests/editors/test_vscode.py writes, under plain Node:
//   node out/test/window-cases.js CASES.json RESULT.json
// The judging is in Python (tests/support/editor_window.py).
import * as fs from 'fs';
import { computeWindow, WindowOptions } from '../src/window';

interface Case {
    doc: number;
    line: number;
    character: number;
    opts: Partial<WindowOptions>;
}

const [casesPath, resultPath] = process.argv.slice(2);
const input = JSON.parse(fs.readFileSync(casesPath, 'utf8')) as { docs: string[][]; cases: Case[] };
const started = process.hrtime.bigint();
const results = input.cases.map((c) => {
    const lines = input.docs[c.doc];
    const doc = { lineCount: lines.length, lineAt: (i: number) => ({ text: lines[i] }) };
    return computeWindow(doc, c.line, c.character, c.opts);
});
const ms = Number(process.hrtime.bigint() - started) / 1e6;
fs.writeFileSync(resultPath, JSON.stringify({ results, ms }));
