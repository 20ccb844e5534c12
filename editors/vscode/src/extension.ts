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
import { InlineProvider } from './inline';
import { Vibrant } from './vibrant';

/** What `activate` returns: for tests and for other extensions. */
export interface VibrantApi {
    readonly vibrant: Vibrant;
    readonly inline: InlineProvider;
}

let instance: Vibrant | undefined;

export function activate(context: vscode.ExtensionContext): VibrantApi {
    // Nothing here starts the server: it starts with the first command or completion.
    const vibrant = new Vibrant();
    instance = vibrant;
    const inline = new InlineProvider(vibrant);
    context.subscriptions.push(
        vibrant,
        inline,
        vibrant.onUpdateAvailable((u) => onUpdateAvailable(vibrant, u)),
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
                await vibrant.restart();
            } catch (err) {
                vibrant.showError('Restart Server', err);
            }
        }),
    );
    return { vibrant, inline };
}

export async function deactivate(): Promise<void> {
    await instance?.stop();
    instance = undefined;
}
