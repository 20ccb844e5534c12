// The status bar item: the model's state, a running download, a server that isn't found, or
// the team engine completions go to (its model, its health). Click: Vibrant's commands.
import * as vscode from 'vscode';
import { ServerClient, ServerState } from './client';
import { EngineInfo } from './protocol';
import { INSTALL_HINT } from './serverLocator';

interface ItemLook {
    text: string;
    tooltip: string;
    background?: string;
}

/** The engine's address as shown: never a user or password (the server refuses a key in
 * the url, and this keeps one from being shown if it ever got there). */
export function shownUrl(url: string): string {
    return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1');
}

/** Where completions go when the settings name an engine: its name and the model it serves,
 * a warning when it is not healthy; the tooltip says the URL, kind, model and fallback. */
export function engineStatusOf(e: EngineInfo, s: ServerState): ItemLook {
    const fallback = e.fallback === 'local';
    const lines: string[] = [];
    let text: string;
    let background: string | undefined;
    if (e.healthy === false) {
        text = `$(warning) Vibrant: ${e.name} unhealthy${fallback ? ' · local fallback' : ''}`;
        background = 'statusBarItem.warningBackground';
        lines.push(`The engine ${e.name} is not healthy: ${e.error ?? 'it did not answer'}`);
        if (e.hint) {
            lines.push(e.hint);
        }
    } else if (e.healthy === true) {
        text = `$(cloud) Vibrant: ${e.name} · ${e.model ?? 'no model named'}`;
        lines.push(`Completions go to the engine ${e.name}: healthy.`);
        if (e.error) {
            lines.push(`Its last error: ${e.error}`);
        }
    } else {
        text = `$(cloud) Vibrant: ${e.name} · not checked yet`;
        lines.push(`Completions go to the engine ${e.name} (not checked yet).`);
    }
    lines.push(`URL: ${shownUrl(e.url)}`);
    lines.push(`Kind: ${e.kind ?? 'not known yet'}`);
    const slots = e.slots ? ` (${e.slots} slot${e.slots === 1 ? '' : 's'})` : '';
    lines.push(`Model: ${e.model ?? 'not known yet'}${slots}`);
    lines.push(fallback
        ? 'Fallback: the local model answers when the engine can\'t be reached (fallback = "local").'
        : 'Fallback: none: completions fail while the engine can\'t be reached.');
    if (s.answeredBy) {
        const who = s.answeredBy === 'local' ? `the local model${s.modelId ? ` (${s.modelId})` : ''}` : `the engine ${s.answeredBy}`;
        lines.push(`Last completion: ${who}${s.fallbackReason ? `. ${s.fallbackReason}` : '.'}`);
    }
    return { text, tooltip: lines.join('\n'), background };
}

/** The item's text and tooltip for a state of the server. */
export function statusOf(s: ServerState): ItemLook {
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
    if (s.engine) {
        return engineStatusOf(s.engine, s);
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

    get tooltip(): string {
        return typeof this.item.tooltip === 'string' ? this.item.tooltip : this.item.tooltip?.value ?? '';
    }

    /** The theme color of the item's background: a warning or an error; undefined: none. */
    get background(): string | undefined {
        return this.item.backgroundColor?.id;
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
