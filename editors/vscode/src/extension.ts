// Vibrant for VS Code: local completions from vibrant-rpc, which starts on first use.
import * as vscode from 'vscode';
import {
    checkUpdates,
    downloadModel,
    onUpdateAvailable,
    removeModel,
    selectModel,
    showCache,
    showStatus,
    updateModel,
} from './commands';
import type { ServerClient } from './client';
import { ContextChunks } from './contextChunks';
import { InlineProvider } from './inline';
import type { StatusBar } from './statusBar';
import type { Ui } from './ui';
import { Vibrant } from './vibrant';

/** What `activate` returns, for other extensions (and the integration tests). */
export interface VibrantApi {
    /** The server: its state, requests to it, stopping it. */
    readonly client: ServerClient;
    /** The status bar item's text, and each change of it. */
    readonly statusBar: StatusBar;
    /** What the user is shown: messages, quick picks and progress, as events. */
    readonly ui: Ui;
    /** Inline completions; onDidComplete has each request's record. */
    readonly inline: InlineProvider;
}

let instance: Vibrant | undefined;

export function activate(context: vscode.ExtensionContext): VibrantApi {
    // Nothing here starts the server: it starts with the first command or completion.
    const vibrant = new Vibrant();
    instance = vibrant;
    const chunks = new ContextChunks();
    const inline = new InlineProvider(vibrant, chunks.ring);
    context.subscriptions.push(
        vibrant,
        chunks,
        inline,
        vscode.commands.registerCommand('vibrant.copy', () => chunks.copy(false)),
        vscode.commands.registerCommand('vibrant.cut', () => chunks.copy(true)),
        vibrant.client.onUpdateAvailable((u) => onUpdateAvailable(vibrant, u)),
        vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, inline),
        vscode.commands.registerCommand('vibrant.selectModel', (id?: string) => selectModel(vibrant, id)),
        vscode.commands.registerCommand('vibrant.downloadModel', (id?: string) => downloadModel(vibrant, id)),
        vscode.commands.registerCommand('vibrant.removeModel', (id?: string, options?: { confirm?: boolean }) =>
            removeModel(vibrant, id, options?.confirm ?? true)),
        vscode.commands.registerCommand('vibrant.showCache', () => showCache(vibrant)),
        vscode.commands.registerCommand('vibrant.checkUpdates', () => checkUpdates(vibrant)),
        vscode.commands.registerCommand('vibrant.updateModel', (id?: string) => updateModel(vibrant, id)),
        vscode.commands.registerCommand('vibrant.showStatus', () => showStatus(vibrant)),
        vscode.commands.registerCommand('vibrant.showLog', () => vibrant.output.show(true)),
        vscode.commands.registerCommand('vibrant.restartServer', async () => {
            try {
                await vibrant.client.restart();
            } catch (err) {
                vibrant.showError('Restart Server', err);
            }
        }),
    );
    return { client: vibrant.client, statusBar: vibrant.statusBar, ui: vibrant.ui, inline };
}

export async function deactivate(): Promise<void> {
    await instance?.client.stop();
    instance = undefined;
}
