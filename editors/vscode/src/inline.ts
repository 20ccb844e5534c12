// Inline completions: fill-in-the-middle from the text before and after the cursor.
import * as vscode from 'vscode';
import { ResponseError } from 'vscode-languageclient/node';
import { currentModel } from './commands';
import { documentName } from './contextChunks';
import { CompleteParams, CompleteResult, ContextFile, ErrorCodes as ErrorCode } from './protocol';
import type { Ring } from './ring';
import { isCancelled, Vibrant } from './vibrant';
import { computeWindow, ContextWindow, DEFAULT_WINDOW, WindowOptions } from './window';

export interface CompletionRecord {
    uri: string;
    prompt: string;
    suffix: string;
    /** The window's first line (it moves only every `windowStepLines` lines). */
    startLine: number;
    /** What else the request said: the document's language and name, chunks of other files. */
    languageId?: string;
    filename?: string;
    context?: ContextFile[];
    result?: CompleteResult;
    error?: string;
    cancelled?: boolean;
    /** Answered without a request: the user typed the start of the suggestion shown. */
    typedThrough?: boolean;
    /** What was shown (the completion, or the rest of it after typing through). */
    shown?: string;
    /** From the editor's call to the answer, in milliseconds. */
    elapsedMs?: number;
}

/** The last completion shown, to keep showing its rest while the user types it. */
interface Shown {
    uri: string;
    anchor: vscode.Position;
    prompt: string;
    suffix: string;
    text: string;
}

function windowOptions(cfg: vscode.WorkspaceConfiguration): WindowOptions {
    const d = DEFAULT_WINDOW;
    return {
        prefixLines: cfg.get<number>('inlineCompletions.prefixLines', d.prefixLines),
        suffixLines: cfg.get<number>('inlineCompletions.suffixLines', d.suffixLines),
        windowStep: cfg.get<number>('inlineCompletions.windowStepLines', d.windowStep),
        maxPrefixChars: cfg.get<number>('inlineCompletions.maxPrefixChars', d.maxPrefixChars),
        maxSuffixChars: cfg.get<number>('inlineCompletions.maxSuffixChars', d.maxSuffixChars),
    };
}

/** The rest of the shown completion if, since it was shown, the user typed its start
 * and changed nothing else around the cursor; else undefined. */
function typedThrough(
    shown: Shown | undefined,
    document: vscode.TextDocument,
    position: vscode.Position,
    w: ContextWindow,
): string | undefined {
    if (!shown || shown.uri !== document.uri.toString() || position.isBeforeOrEqual(shown.anchor)) {
        return undefined;
    }
    const typed = document.getText(new vscode.Range(shown.anchor, position));
    if (typed.length >= shown.text.length || !shown.text.startsWith(typed)) {
        return undefined;
    }
    // The windows may differ by whole lines at their far ends (the start moved a step,
    // the suffix lost a line at its end): what is next to the cursor must be the same.
    const before = shown.prompt + typed;
    const sameBefore = before.endsWith(w.prompt) || w.prompt.endsWith(before);
    const sameAfter = w.suffix.startsWith(shown.suffix) || shown.suffix.startsWith(w.suffix);
    return sameBefore && sameAfter ? shown.text.slice(typed.length) : undefined;
}

function sleep(ms: number, token: vscode.CancellationToken): Promise<void> {
    return new Promise((resolve) => {
        const timer = setTimeout(() => {
            sub.dispose();
            resolve();
        }, ms);
        const sub = token.onCancellationRequested(() => {
            clearTimeout(timer);
            sub.dispose();
            resolve();
        });
    });
}

export class InlineProvider implements vscode.InlineCompletionItemProvider {
    private current: vscode.CancellationTokenSource | undefined;
    private shown: Shown | undefined;
    private readonly completed = new vscode.EventEmitter<CompletionRecord>();
    /** Each request's record as it ends: answered, failed, cancelled or typed through. */
    readonly onDidComplete = this.completed.event;

    constructor(
        private readonly vibrant: Vibrant,
        /** Chunks of other files sent with each request (src/contextChunks.ts fills it). */
        private readonly ring: Ring,
    ) {}

    async provideInlineCompletionItems(
        document: vscode.TextDocument,
        position: vscode.Position,
        context: vscode.InlineCompletionContext,
        token: vscode.CancellationToken,
    ): Promise<vscode.InlineCompletionList | undefined> {
        const cfg = vscode.workspace.getConfiguration('vibrant', document);
        if (!cfg.get<boolean>('inlineCompletions.enabled', true)) {
            return undefined;
        }
        // A new request cancels the one before (VS Code cancels its token too as you type).
        this.current?.cancel();
        const cts = new vscode.CancellationTokenSource();
        this.current = cts;
        const sub = token.onCancellationRequested(() => cts.cancel());
        const started = Date.now();
        try {
            const eol = document.eol === vscode.EndOfLine.CRLF ? '\r\n' : '\n';
            const w = computeWindow(document, position.line, position.character, windowOptions(cfg), eol);
            const { prompt, suffix } = w;
            const uri = document.uri.toString();
            const rest = typedThrough(this.shown, document, position, w);
            if (rest !== undefined) {
                // No request: the model's answer for here is the rest of the last one.
                const elapsedMs = Date.now() - started;
                this.completed.fire({ uri, prompt, suffix, startLine: w.startLine, typedThrough: true, shown: rest, elapsedMs });
                return new vscode.InlineCompletionList([
                    new vscode.InlineCompletionItem(rest, new vscode.Range(position, position)),
                ]);
            }
            if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) {
                await sleep(cfg.get<number>('inlineCompletions.debounceMs', 150), cts.token);
            }
            if (cts.token.isCancellationRequested) {
                return undefined;
            }
            // `multiline` is left out: the server decides one line or several by its rule
            // (several only at the end of a line or on an empty one, outside a line comment),
            // from the same text, with each language's line comment and strings, which the
            // shims would have to copy, and keep in step, to decide it themselves.
            const { languageId } = document;
            const filename = documentName(document);
            const params: CompleteParams = {
                prompt,
                suffix,
                maxTokens: cfg.get<number>('inlineCompletions.maxTokens', 64),
                languageId,
                filename,
            };
            const chunks = this.ring.context(prompt + suffix);
            if (chunks.length > 0) {
                params.context = chunks;
            }
            const model = currentModel();
            if (model) {
                params.modelId = model;
            }
            const record: CompletionRecord = {
                uri, prompt, suffix, startLine: w.startLine, languageId, filename, context: chunks,
            };
            try {
                record.result = await this.vibrant.client.request<CompleteResult>('vibrant/complete', params, cts.token);
            } catch (err) {
                record.cancelled = isCancelled(err) || cts.token.isCancellationRequested;
                record.error = err instanceof Error ? err.message : String(err);
                this.completed.fire(record);
                if (!record.cancelled) {
                    this.vibrant.client.noteError(err);
                    this.reportError(err);
                }
                return undefined;
            }
            record.elapsedMs = Date.now() - started;
            this.vibrant.client.noteAnswer(record.result);
            const text = record.result.text;
            const show = text.trim() !== '' && !cts.token.isCancellationRequested;
            if (show) {
                record.shown = text;
                this.shown = { uri, anchor: position, prompt, suffix, text };
            }
            this.completed.fire(record);
            if (!show) {
                return undefined;
            }
            const item = new vscode.InlineCompletionItem(text, new vscode.Range(position, position));
            return new vscode.InlineCompletionList([item]);
        } finally {
            sub.dispose();
            if (this.current === cts) {
                this.current = undefined;
            }
            cts.dispose();
        }
    }

    private reportError(err: unknown): void {
        if (err instanceof ResponseError && err.code === ErrorCode.NotCached) {
            // No model yet: offer the download once, not on every keystroke.
            const data = (err.data ?? {}) as { modelId?: string; downloadBytes?: number };
            if (data.modelId) {
                this.vibrant.offerDownload(data.modelId, data.downloadBytes);
                return;
            }
        }
        // Typing must not raise a dialog per keystroke: log it; the status bar shows failures.
        this.vibrant.output.appendLine(`Inline completion failed: ${err instanceof Error ? err.message : String(err)}`);
    }

    dispose(): void {
        this.current?.cancel();
        this.completed.dispose();
    }
}
