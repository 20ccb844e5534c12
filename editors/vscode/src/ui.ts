// What the extension shows the user: messages, quick picks and notification progress. Each
// goes through here and is also published as an event, part of the API that `activate`
// returns: another extension (or the integration tests) can follow what the user was shown
// without reaching into the extension's internals.
import * as vscode from 'vscode';

export type MessageKind = 'info' | 'warning' | 'error';

export interface ShownMessage {
    kind: MessageKind;
    text: string;
}

export interface ProgressStep {
    /** The notification's title. */
    title: string;
    message?: string;
    /** Percent added to the notification's bar by this step. */
    increment?: number;
}

export class Ui implements vscode.Disposable {
    private readonly messages = new vscode.EventEmitter<ShownMessage>();
    private readonly quickPicks = new vscode.EventEmitter<vscode.QuickPick<vscode.QuickPickItem>>();
    private readonly progress = new vscode.EventEmitter<ProgressStep>();
    /** Every message shown, as it is shown. */
    readonly onDidShowMessage = this.messages.event;
    /** Every quick pick shown, live: its items, title and value can be read and set. */
    readonly onDidShowQuickPick = this.quickPicks.event;
    /** Every step of a notification's progress. */
    readonly onDidReportProgress = this.progress.event;

    showMessage(kind: MessageKind, text: string, ...actions: string[]): Thenable<string | undefined> {
        this.messages.fire({ kind, text });
        switch (kind) {
            case 'info':
                return vscode.window.showInformationMessage(text, ...actions);
            case 'warning':
                return vscode.window.showWarningMessage(text, ...actions);
            case 'error':
                return vscode.window.showErrorMessage(text, ...actions);
        }
    }

    /** A modal question with one action besides Cancel: whether the user chose it. */
    async confirm(text: string, action: string): Promise<boolean> {
        this.messages.fire({ kind: 'warning', text });
        return (await vscode.window.showWarningMessage(text, { modal: true }, action)) === action;
    }

    showQuickPick<T extends vscode.QuickPickItem>(qp: vscode.QuickPick<T>): void {
        qp.show();
        this.quickPicks.fire(qp as unknown as vscode.QuickPick<vscode.QuickPickItem>);
    }

    reportProgress(
        progress: vscode.Progress<{ message?: string; increment?: number }>,
        step: ProgressStep,
    ): void {
        progress.report({ message: step.message, increment: step.increment });
        this.progress.fire(step);
    }

    dispose(): void {
        this.messages.dispose();
        this.quickPicks.dispose();
        this.progress.dispose();
    }
}
