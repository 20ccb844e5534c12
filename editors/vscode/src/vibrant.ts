// The extension's parts, made once in `activate`: the output channel, what the user is shown
// (ui), the language client (started on first use) and the status bar item; and how a failed
// request is told to the user.
import * as vscode from 'vscode';
import { ResponseError } from 'vscode-languageclient/node';
import { ServerClient } from './client';
import { formatBytes } from './format';
import { ErrorCodes as ErrorCode } from './protocol';
import { ServerNotFoundError } from './serverLocator';
import { StatusBar } from './statusBar';
import { Ui } from './ui';

export class Vibrant implements vscode.Disposable {
    readonly output: vscode.OutputChannel;
    readonly ui: Ui;
    readonly client: ServerClient;
    readonly statusBar: StatusBar;
    private readonly notCachedOffered = new Set<string>();
    private readonly disposables: vscode.Disposable[];

    constructor() {
        this.output = vscode.window.createOutputChannel('Vibrant');
        this.ui = new Ui();
        this.client = new ServerClient(this.output, this.ui);
        this.statusBar = new StatusBar(this.client);
        this.disposables = [
            this.client, this.statusBar, this.ui, this.output,
            // A model that loaded is downloaded: offer it again if it goes missing later.
            this.client.onDidChangeState((s) => {
                if (s.model === 'ready' && s.modelId) {
                    this.notCachedOffered.delete(s.modelId);
                }
            }),
        ];
    }

    /** Show a failed request the way the user can act on it; silent for cancellations. */
    showError(action: string, err: unknown): void {
        if (isCancelled(err) || err instanceof ServerNotFoundError) {
            return; // cancelled by the user, or already told how to install the server
        }
        if (err instanceof ResponseError && err.code === ErrorCode.NotCached) {
            const data = (err.data ?? {}) as { modelId?: string; downloadBytes?: number };
            if (data.modelId) {
                this.offerDownload(data.modelId, data.downloadBytes, true);
                return;
            }
        }
        const message = err instanceof Error ? err.message : String(err);
        const text = `Vibrant: ${action} failed: ${message}`;
        void this.ui.showMessage('error', text, 'Show Log')
            .then((choice) => choice && this.output.show(true));
        this.output.appendLine(text);
    }

    /** "No model is downloaded": offer it, once per model unless `force`. */
    offerDownload(modelId: string, downloadBytes: number | undefined, force = false): void {
        if (!force && this.notCachedOffered.has(modelId)) {
            return;
        }
        this.notCachedOffered.add(modelId);
        const size = downloadBytes ? ` (${formatBytes(downloadBytes)})` : '';
        const text = `Vibrant: the model ${modelId} is not downloaded yet. Download it${size} to get completions?`;
        void this.ui.showMessage('info', text, 'Download', 'Select Another Model')
            .then((choice) => {
                if (choice === 'Download') {
                    return vscode.commands.executeCommand('vibrant.downloadModel', modelId);
                }
                if (choice === 'Select Another Model') {
                    return vscode.commands.executeCommand('vibrant.selectModel');
                }
                return undefined;
            });
    }

    dispose(): void {
        for (const d of this.disposables) {
            d.dispose();
        }
    }
}

export function isCancelled(err: unknown): boolean {
    return (
        err instanceof vscode.CancellationError ||
        (err instanceof ResponseError && err.code === ErrorCode.Cancelled)
    );
}

export function errorCode(err: unknown): number | undefined {
    return err instanceof ResponseError ? err.code : undefined;
}
