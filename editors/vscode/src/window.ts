// The text around the cursor that a completion request sends: whole lines, in a window
// whose start moves in steps of several lines, so that successive requests share their
// start and the server reuses its cache of it while you type. The character caps are a
// safety net that cuts at line boundaries, and inside an over-long line never between the
// two halves of a surrogate pair: a lone surrogate is text the server cannot encode.
//
// No `vscode` import: tests run it under plain Node.

export interface WindowOptions {
    /** Lines before the cursor line (as llama.vscode's n_prefix). */
    prefixLines: number;
    /** Lines after it (llama.vscode's n_suffix). */
    suffixLines: number;
    /** The window's start moves in steps of this many lines. */
    windowStep: number;
    /** UTF-16 code units; the start drops whole lines (steps first) to fit. */
    maxPrefixChars: number;
    /** UTF-16 code units; the end drops whole lines to fit. */
    maxSuffixChars: number;
}

export const DEFAULT_WINDOW: WindowOptions = {
    prefixLines: 256,
    suffixLines: 64,
    windowStep: 32,
    maxPrefixChars: 16000,
    maxSuffixChars: 4000,
};

/** The lines of a document, without their line breaks (a vscode.TextDocument fits). */
export interface TextLines {
    readonly lineCount: number;
    lineAt(line: number): { readonly text: string };
}

export interface ContextWindow {
    prompt: string;
    suffix: string;
    /** The first line the prompt takes text from. */
    startLine: number;
    /** The line after the last one the suffix takes text from. */
    endLine: number;
    /** The cursor line's head alone was over the cap: the prompt starts inside it. */
    promptCut: boolean;
    /** Likewise for the suffix and the cursor line's tail. */
    suffixCut: boolean;
}

const isHigh = (c: number): boolean => c >= 0xd800 && c <= 0xdbff;
const isLow = (c: number): boolean => c >= 0xdc00 && c <= 0xdfff;

/** The last at most `cap` code units of s, not starting on the second half of a pair. */
export function tail(s: string, cap: number): string {
    if (cap <= 0) {
        return '';
    }
    if (s.length <= cap) {
        return s;
    }
    let k = s.length - cap;
    if (isLow(s.charCodeAt(k)) && isHigh(s.charCodeAt(k - 1))) {
        k += 1;
    }
    return s.slice(k);
}

/** The first at most `cap` code units of s, not ending on the first half of a pair. */
export function head(s: string, cap: number): string {
    if (cap <= 0) {
        return '';
    }
    if (s.length <= cap) {
        return s;
    }
    let e = cap;
    if (isHigh(s.charCodeAt(e - 1)) && isLow(s.charCodeAt(e))) {
        e -= 1;
    }
    return s.slice(0, e);
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** s with every lone surrogate replaced by U+FFFD (what a UTF-8 encoder can write). */
export function wellFormed(s: string): string {
    return s.replace(LONE_SURROGATE, '\ufffd');
}

/** The window's first line for a cursor on `line`: `prefixLines` back, rounded down to a
 * multiple of `windowStep`, so it stays put for `windowStep` lines of moving down. */
export function startLine(line: number, opts: WindowOptions): number {
    const step = Math.max(1, Math.floor(opts.windowStep));
    const start = Math.max(0, line - opts.prefixLines);
    return start - (start % step);
}

/** The request's text for a cursor at (line, character), joined with `eol`. */
export function computeWindow(
    doc: TextLines,
    line: number,
    character: number,
    options: Partial<WindowOptions> = {},
    eol = '\n',
): ContextWindow {
    const opts: WindowOptions = { ...DEFAULT_WINDOW, ...options };
    const step = Math.max(1, Math.floor(opts.windowStep));
    const pcap = Math.max(0, opts.maxPrefixChars);
    const scap = Math.max(0, opts.maxSuffixChars);
    const text = doc.lineAt(line).text;
    let before = text.slice(0, character);
    let after = text.slice(character);

    const start = startLine(line, opts);
    const lines: string[] = [];
    let size = before.length;
    for (let i = start; i < line; i++) {
        const l = doc.lineAt(i).text;
        lines.push(l);
        size += l.length + eol.length;
    }
    let first = 0;
    const drop = (n: number): void => {
        for (let i = first; i < first + n; i++) {
            size -= lines[i].length + eol.length;
        }
        first += n;
    };
    // Whole steps first, so that the start still moves only every few lines.
    while (size > pcap && first + step <= lines.length) {
        drop(step);
    }
    while (size > pcap && first < lines.length) {
        drop(1);
    }
    let promptCut = false;
    if (size > pcap) {
        before = tail(before, pcap);
        promptCut = true;
    }
    const kept = lines.slice(first);
    kept.push(before);

    const last = Math.min(doc.lineCount, line + 1 + opts.suffixLines);
    const next: string[] = [];
    size = after.length;
    for (let i = line + 1; i < last; i++) {
        const l = doc.lineAt(i).text;
        next.push(l);
        size += eol.length + l.length;
    }
    while (size > scap && next.length > 0) {
        size -= eol.length + next[next.length - 1].length;
        next.pop();
    }
    let suffixCut = false;
    if (size > scap) {
        after = head(after, scap);
        suffixCut = true;
    }
    return {
        prompt: wellFormed(kept.join(eol)),
        suffix: wellFormed([after, ...next].join(eol)),
        startLine: start + first,
        endLine: line + 1 + next.length,
        promptCut,
        suffixCut,
    };
}
