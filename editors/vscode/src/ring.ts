// Chunks of other files for the model to see before the cursor's window (vibrant/complete's
// `context`), collected as llama.vim and llama.vscode collect their "ring" (llama.vim's
// s:pick_chunk and s:ring_chunks, llama.vscode's src/extra-context.ts): a few dozen lines of
// text the user copied, and around the cursor of an editor entered, left or saved. The ring
// holds at most `chunks` of them, oldest first, the order the server puts them in; the oldest
// goes when it is full.
//
// Two kinds of chunk are dropped, as llama.vim drops them:
// - a new chunk nearly the same as one already held (Jaccard similarity of their lines over
//   `similar`, as llama.vscode measures it) replaces it: the same code twice is room wasted;
// - a chunk whose lines are mostly in the text around the cursor (over `inWindow` of them) is
//   evicted when a request is built: the model already sees that code, and seeing it twice
//   makes it repeat it. It is evicted, not skipped for one request, so that the context only
//   changes when something is picked, and the server's cache of the prompt's start (the
//   chunks come first) holds while the user types.
// A chunk is picked deterministically (the first `chunkLines` lines of the text given;
// llama.vim picks a random half of its 64 lines), so that tests can say what is sent.
//
// No `vscode` import: tests run it under plain Node. src/contextChunks.ts feeds it.
import type { ContextFile } from './protocol';
import { tail, wellFormed } from './window';

export interface RingOptions {
    /** The most chunks held and sent (the server takes 16 at most); 0 sends none. */
    chunks: number;
    /** Lines in a chunk. llama.vim's are half its ring_chunk_size of 64; the server gives all
     * chunks together about 1024 tokens, which 64-line chunks (500+ tokens each) would
     * leave to one or two. */
    chunkLines: number;
    /** Fewer lines say too little (llama.vim's limit). */
    minLines: number;
    /** UTF-16 code units of a chunk's text (the server's cap is 16,000 characters). */
    maxChars: number;
    /** Jaccard similarity over which a new chunk replaces an old one. */
    similar: number;
    /** Share of a chunk's lines in the window over which it is evicted. */
    inWindow: number;
}

export const DEFAULT_RING: RingOptions = {
    chunks: 16,
    chunkLines: 32,
    minLines: 3,
    maxChars: 16000,
    similar: 0.9,
    inWindow: 0.5,
};

export interface Chunk extends ContextFile {
    lines: string[];
}

/** Why a pick added nothing: the ring is off, too few lines, only blank ones, held already. */
export type NotPicked = 'off' | 'small' | 'blank' | 'held';

/** The lines that say what a chunk is: trailing blanks stripped, blank lines left out. */
function lineSet(lines: readonly string[]): Set<string> {
    const set = new Set<string>();
    for (const line of lines) {
        const l = line.replace(/\s+$/, '');
        if (l !== '') {
            set.add(l);
        }
    }
    return set;
}

/** Jaccard similarity of two lists of lines (as sets of their non-blank lines), 0..1. */
export function similarity(a: readonly string[], b: readonly string[]): number {
    const sa = lineSet(a);
    const sb = lineSet(b);
    if (sa.size + sb.size === 0) {
        return 1;
    }
    let common = 0;
    for (const l of sa) {
        if (sb.has(l)) {
            common++;
        }
    }
    return common / (sa.size + sb.size - common);
}

export class Ring {
    readonly options: RingOptions;
    /** Oldest first. */
    readonly chunks: Chunk[] = [];
    /** How many were dropped as near duplicates or as in the window. */
    evicted = 0;

    constructor(options: Partial<RingOptions> = {}) {
        this.options = { ...DEFAULT_RING, ...options };
    }

    /** Pick a chunk from `lines` (a copy, or lines around a cursor) of `filename`: the chunk
     * added, or why not. */
    pick(lines: readonly string[], filename: string): Chunk | NotPicked {
        const o = this.options;
        if (o.chunks <= 0) {
            return 'off';
        }
        const chunk: string[] = [];
        let size = 0;
        for (const raw of lines.slice(0, o.chunkLines)) {
            const line = wellFormed(raw);
            if (size + line.length + 1 > o.maxChars) {
                break; // whole lines only
            }
            chunk.push(line);
            size += line.length + 1;
        }
        if (chunk.length < o.minLines) {
            return 'small';
        }
        if (lineSet(chunk).size === 0) {
            return 'blank';
        }
        const text = chunk.join('\n') + '\n';
        if (this.chunks.some((c) => c.text === text)) {
            return 'held';
        }
        for (let i = this.chunks.length - 1; i >= 0; i--) {
            if (similarity(this.chunks[i].lines, chunk) > o.similar) {
                this.chunks.splice(i, 1);
                this.evicted++;
            }
        }
        // The server takes a name of 1,000 characters at most: its end says most.
        const added: Chunk = { filename: tail(wellFormed(filename || 'untitled'), 1000), text, lines: chunk };
        this.chunks.push(added);
        while (this.chunks.length > o.chunks) {
            this.chunks.shift();
        }
        return added;
    }

    /** The chunks to send with a request whose window (prompt + suffix) is `windowText`:
     * chunks mostly inside the window are evicted first. */
    context(windowText: string): ContextFile[] {
        const inWindow = lineSet(windowText.split(/\r?\n/));
        for (let i = this.chunks.length - 1; i >= 0; i--) {
            const set = lineSet(this.chunks[i].lines);
            let inside = 0;
            for (const l of set) {
                if (inWindow.has(l)) {
                    inside++;
                }
            }
            if (set.size > 0 && inside / set.size > this.options.inWindow) {
                this.chunks.splice(i, 1);
                this.evicted++;
            }
        }
        return this.chunks.map((c) => ({ filename: c.filename, text: c.text }));
    }
}
