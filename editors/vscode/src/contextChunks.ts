// What feeds the ring of chunks (src/ring.ts) sent as vibrant/complete's `context`, as
// llama.vscode feeds its own: the lines around the cursor of an editor entered or left, and
// of a document saved in an editor (only files saved as shown: a dirty document's text may
// be half typed), and text copied or cut (Copy and Cut run through `vibrant.copy`/`vibrant.cut`,
// which pick the selection and then run the editor's own action, as llama.vscode's
// copyIntercept does: VS Code has no event for a copy).
import * as vscode from 'vscode';
import { Ring } from './ring';
import { tail, wellFormed } from './window';

/** A document's name as sent: relative to its workspace folder when inside one (the server
 * takes 1,000 characters at most: the end says most). */
export function documentName(document: vscode.TextDocument): string {
    return tail(wellFormed(vscode.workspace.asRelativePath(document.uri, false)), 1000);
}

const SETTING = 'inlineCompletions.contextChunks';

export class ContextChunks implements vscode.Disposable {
    readonly ring = new Ring();
    /** The editor active now, to pick around its cursor when the user leaves it. */
    private active: vscode.TextEditor | undefined;
    private readonly disposables: vscode.Disposable[];

    constructor() {
        this.readSetting();
        this.active = vscode.window.activeTextEditor;
        this.disposables = [
            vscode.workspace.onDidChangeConfiguration((e) => {
                if (e.affectsConfiguration(`vibrant.${SETTING}`)) {
                    this.readSetting();
                }
            }),
            vscode.window.onDidChangeActiveTextEditor((editor) => {
                const left = this.active;
                this.active = editor;
                if (left && !left.document.isClosed) {
                    this.pickAroundCursor(left);
                }
                if (editor) {
                    this.pickAroundCursor(editor);
                }
            }),
            vscode.workspace.onDidSaveTextDocument((document) => {
                // Only a document the user sees: VS Code itself saves others (settings.json on
                // each change of a setting), which are not code the user works on.
                const editor = vscode.window.activeTextEditor?.document === document
                    ? vscode.window.activeTextEditor
                    : vscode.window.visibleTextEditors.find((e) => e.document === document);
                if (editor) {
                    this.pickAroundCursor(editor);
                }
            }),
        ];
    }

    private readSetting(): void {
        const n = vscode.workspace.getConfiguration('vibrant').get<number>(SETTING, 16);
        this.ring.options.chunks = Math.max(0, Math.min(16, Math.floor(n)));
        this.ring.chunks.splice(0, Math.max(0, this.ring.chunks.length - this.ring.options.chunks));
    }

    private pickLines(document: vscode.TextDocument, first: number): void {
        if (document.isDirty || document.uri.scheme !== 'file') {
            return;
        }
        const last = Math.min(document.lineCount, first + this.ring.options.chunkLines);
        const lines: string[] = [];
        for (let i = first; i < last; i++) {
            lines.push(document.lineAt(i).text);
        }
        this.ring.pick(lines, documentName(document));
    }

    private pickAroundCursor(editor: vscode.TextEditor): void {
        const line = editor.selection.active.line;
        this.pickLines(editor.document, Math.max(0, line - Math.floor(this.ring.options.chunkLines / 2)));
    }

    /** Copy (or cut) as the editor does, keeping what was selected as a chunk first. */
    async copy(cut: boolean): Promise<void> {
        try {
            const editor = vscode.window.activeTextEditor;
            for (const selection of editor?.selections ?? []) {
                if (editor && !selection.isEmpty) {
                    const text = editor.document.getText(selection);
                    this.ring.pick(text.split(/\r?\n/), documentName(editor.document));
                }
            }
        } finally {
            // Whatever happened above, the user's copy happens.
            await vscode.commands.executeCommand(cut ? 'editor.action.clipboardCutAction' : 'editor.action.clipboardCopyAction');
        }
    }

    dispose(): void {
        for (const d of this.disposables) {
            d.dispose();
        }
    }
}
