// The status bar item: the model's state, a running download, or a server that isn't found.
// Click: Vibrant's commands (Show Status).
import * as vscode from 'vscode';
import { ServerClient, ServerState } from './client';
import { INSTALL_HINT } from './serverLocator';

/** The item's text and tooltip for a state of the server. */
export function statusOf(s: ServerState): { text: string; tooltip: string; background?: string } {
    const download = s.downloads[0];
    if (s.missingServer) {
        return {
            text: '$(warning) Vibrant: server not found',
            tooltip: `${s.missingServer} ${INSTALL_HINT}`,
            background: 'statusBarItem.warningBackground',
        };
    }
    if (download) {
        const pct = download.percent === undefined ? '' : ` ${download.percent}%`;
        return {
            text: `$(cloud-download) Vibrant: downloading${pct}`,
            tooltip: `Downloading ${download.modelId}: ${download.line}`,
        };
    }
    switch (s.model) {
        case 'loading':
            return {
                text: `$(loading~spin) Vibrant: loading ${s.modelId ?? ''}`.trimEnd(),
                tooltip: `Loading ${s.modelId ?? 'the model'}${s.reason ? ` (${s.reason})` : ''}`,
            };
        case 'ready':
            return { text: `$(check) Vibrant: ready · ${s.modelId ?? ''}`, tooltip: `${s.modelId} is loaded and completing.` };
        case 'failed':
            return {
                text: '$(error) Vibrant: load failed',
                tooltip: s.reason ?? 'The model failed to load; see the Vibrant output.',
                background: 'statusBarItem.errorBackground',
            };
        default:
            return {
                text: '$(circle-outline) Vibrant: not loaded',
                tooltip: s.running
                    ? 'No model is loaded; the first completion loads one.'
                    : 'The model server starts with the first completion or Vibrant command.',
            };
    }
}

export class StatusBar implements vscode.Disposable {
    private readonly item: vscode.StatusBarItem;
    private readonly changes = new vscode.EventEmitter<string>();
    private readonly subscription: vscode.Disposable;
    /** The item's new text, each time it changes. */
    readonly onDidChangeText = this.changes.event;

    constructor(client: ServerClient) {
        this.item = vscode.window.createStatusBarItem('vibrant.status', vscode.StatusBarAlignment.Right, 100);
        this.item.name = 'Vibrant';
        this.item.command = 'vibrant.showStatus';
        this.render(client.state);
        this.item.show();
        this.subscription = client.onDidChangeState((s) => this.render(s));
    }

    get text(): string {
        return this.item.text;
    }

    private render(s: ServerState): void {
        const { text, tooltip, background } = statusOf(s);
        const changed = this.item.text !== text;
        this.item.text = text;
        this.item.tooltip = `${tooltip}\nClick for Vibrant's commands.`;
        this.item.backgroundColor = background ? new vscode.ThemeColor(background) : undefined;
        if (changed) {
            this.changes.fire(text);
        }
    }

    dispose(): void {
        this.subscription.dispose();
        this.item.dispose();
        this.changes.dispose();
    }
}
