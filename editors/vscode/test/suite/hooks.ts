// What the suite reads of what the user saw, recorded from the API that the extension's
// `activate` returns (its events): nothing here ships in the extension, and no production
// path writes to it.
import * as vscode from 'vscode';
import type { VibrantApi } from '../../src/extension';
import type { CompletionRecord } from '../../src/inline';
import type { ProgressStep } from '../../src/ui';

export class TestHooks implements vscode.Disposable {
    /** The status bar item's texts, each change once, the first the text at activation. */
    readonly statusHistory: string[];
    /** Every message shown, oldest first. */
    readonly messages: string[] = [];
    /** Every step of every notification's progress. */
    readonly progressReports: ProgressStep[] = [];
    /** Every inline completion request's record, oldest first. */
    readonly completions: CompletionRecord[] = [];
    /** The quick pick shown last (live: its items can be read and its value set). */
    quickPick: vscode.QuickPick<vscode.QuickPickItem> | undefined;
    private readonly subscriptions: vscode.Disposable[];

    constructor(api: VibrantApi) {
        this.statusHistory = [api.statusBar.text];
        this.subscriptions = [
            api.statusBar.onDidChangeText((text) => this.statusHistory.push(text)),
            api.ui.onDidShowMessage((m) => this.messages.push(m.text)),
            api.ui.onDidReportProgress((step) => this.progressReports.push(step)),
            api.ui.onDidShowQuickPick((qp) => {
                this.quickPick = qp;
            }),
            api.inline.onDidComplete((record) => this.completions.push(record)),
        ];
    }

    dispose(): void {
        for (const s of this.subscriptions) {
            s.dispose();
        }
    }
}
