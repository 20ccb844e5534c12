// Inline completions: fill-in-the-middle from the text before and after the cursor.
import * as vscode from 'vscode';
import { ResponseError } from 'vscode-languageclient/node';
import { currentModel } from './commands';
import { CompleteParams, CompleteResult, ErrorCode } from './protocol';
import { isCancelled, Vibrant } from './vibrant';

export interface CompletionRecord {
    uri: string;
    prompt: string;
    suffix: string;
    result?: CompleteResult;
    error?: string;
    cancelled?: boolean;
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
    /** The last few requests, newest last (tests read them). */
    readonly history: CompletionRecord[] = [];
    private readonly completed = new vscode.EventEmitter<CompletionRecord>();
    readonly onDidComplete = this.completed.event;

    constructor(private readonly vibrant: Vibrant) {}

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
        try {
            if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) {
                await sleep(cfg.get<number>('inlineCompletions.debounceMs', 150), cts.token);
            }
            if (cts.token.isCancellationRequested) {
                return undefined;
            }
            const chars = cfg.get<number>('inlineCompletions.contextChars', 6000);
            const offset = document.offsetAt(position);
            const start = document.positionAt(Math.max(0, offset - chars));
            const end = document.positionAt(offset + chars);
            const prompt = document.getText(new vscode.Range(start, position));
            const suffix = document.getText(new vscode.Range(position, end));
            const params: CompleteParams = {
                prompt,
                suffix,
                maxTokens: cfg.get<number>('inlineCompletions.maxTokens', 64),
            };
            const model = currentModel();
            if (model) {
                params.modelId = model;
            }
            const record: CompletionRecord = { uri: document.uri.toString(), prompt, suffix };
            try {
                record.result = await this.vibrant.request<CompleteResult>('vibrant/complete', params, cts.token);
            } catch (err) {
                record.cancelled = isCancelled(err) || cts.token.isCancellationRequested;
                record.error = err instanceof Error ? err.message : String(err);
                this.remember(record);
                if (!record.cancelled) {
                    this.reportError(err);
                }
                return undefined;
            }
            this.remember(record);
            const text = record.result.text;
            if (!text.trim() || cts.token.isCancellationRequested) {
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

    private remember(record: CompletionRecord): void {
        this.history.push(record);
        if (this.history.length > 20) {
            this.history.shift();
        }
        this.completed.fire(record);
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
