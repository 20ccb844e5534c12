// The extension's core: the language client, started on first use, and the state it reports.
import { ChildProcess, spawn } from 'child_process';
import * as vscode from 'vscode';
import {
    LanguageClient,
    LanguageClientOptions,
    ResponseError,
    RevealOutputChannelOn,
    ServerOptions,
    State,
} from 'vscode-languageclient/node';
import { downloadLine, formatBytes, percentOf } from './format';
import {
    DownloadProgress,
    ErrorCodes as ErrorCode,
    ModelState,
    ModelStateChanged,
    StatusResult,
    UpdateAvailable,
} from './protocol';
import { INSTALL_HINT, locateServer, ServerCommand, ServerNotFoundError } from './serverLocator';
import { SERVER_SETTING_OF } from './settings';

/** What tests (and only tests) look at; kept small and read-only for everyone else. */
export class TestHooks {
    readonly statusHistory: string[] = [];
    readonly progressReports: { title: string; message?: string; increment?: number }[] = [];
    readonly messages: string[] = [];
    quickPick: vscode.QuickPick<vscode.QuickPickItem> | undefined;
    private readonly quickPickShown = new vscode.EventEmitter<vscode.QuickPick<vscode.QuickPickItem>>();
    readonly onDidShowQuickPick = this.quickPickShown.event;

    showQuickPick(qp: vscode.QuickPick<vscode.QuickPickItem>): void {
        this.quickPick = qp;
        this.quickPickShown.fire(qp);
    }
}

interface DownloadStatus {
    modelId: string;
    percent: number | undefined;
    line: string;
}

// The settings whose change needs a new server: what it is sent, and where to find it.
const SERVER_SETTINGS = [...Object.keys(SERVER_SETTING_OF), 'serverPath', 'pythonPath'];

export class Vibrant implements vscode.Disposable {
    readonly output: vscode.OutputChannel;
    readonly hooks = new TestHooks();
    private readonly statusItem: vscode.StatusBarItem;
    private readonly disposables: vscode.Disposable[] = [];
    private client: LanguageClient | undefined;
    private starting: Promise<LanguageClient> | undefined;
    private process: ChildProcess | undefined;
    private serverCommand: ServerCommand | undefined;
    private missingServer: string | undefined;
    private modelState: ModelState = 'unloaded';
    private modelId: string | null = null;
    private modelReason: string | null | undefined;
    private readonly downloads = new Map<string, DownloadStatus>();
    private readonly downloadEvents = new vscode.EventEmitter<DownloadProgress>();
    /** Every `vibrant/downloadProgress` notification. */
    readonly onDownloadProgress = this.downloadEvents.event;
    private readonly updateEvents = new vscode.EventEmitter<UpdateAvailable>();
    readonly onUpdateAvailable = this.updateEvents.event;
    private readonly notCachedOffered = new Set<string>();
    /** How many times a server process was spawned (tests: 0 until the first command). */
    serverStarts = 0;

    constructor() {
        this.output = vscode.window.createOutputChannel('Vibrant');
        this.statusItem = vscode.window.createStatusBarItem('vibrant.status', vscode.StatusBarAlignment.Right, 100);
        this.statusItem.name = 'Vibrant';
        this.statusItem.command = 'vibrant.showStatus';
        this.renderStatus();
        this.statusItem.show();
        this.disposables.push(
            this.output, this.statusItem, this.downloadEvents, this.updateEvents,
            vscode.workspace.onDidChangeConfiguration((e) => this.onConfigChanged(e)),
        );
    }

    // -- the server process ---------------------------------------------------------------

    get isRunning(): boolean {
        return this.client !== undefined && this.client.state === State.Running;
    }

    get serverPid(): number | undefined {
        return this.isRunning ? this.process?.pid : undefined;
    }

    /** The running client, starting the server first if it isn't. */
    async ensureClient(): Promise<LanguageClient> {
        if (this.client && this.client.state === State.Running) {
            return this.client;
        }
        if (!this.starting) {
            this.starting = this.startClient().finally(() => {
                this.starting = undefined;
            });
        }
        return this.starting;
    }

    async request<R>(method: string, params?: object, token?: vscode.CancellationToken): Promise<R> {
        const client = await this.ensureClient();
        // vscode-jsonrpc takes a trailing undefined for a param: pass only what is there.
        if (token === undefined) {
            return params === undefined ? client.sendRequest<R>(method) : client.sendRequest<R>(method, params);
        }
        return params === undefined ? client.sendRequest<R>(method, token) : client.sendRequest<R>(method, params, token);
    }

    private initializationOptions(): Record<string, unknown> {
        const cfg = vscode.workspace.getConfiguration('vibrant');
        const options: Record<string, unknown> = {};
        const model = cfg.get<string>('model', '').trim();
        if (model) {
            options.model = model;
        }
        const contextSize = cfg.get<number | string>('contextSize');
        if (typeof contextSize === 'number' || contextSize === 'auto') {
            options.contextSize = contextSize;
        }
        const threads = cfg.get<number | null>('threads');
        if (typeof threads === 'number' && threads > 0) {
            options.threads = threads;
        }
        const gpuLayers = cfg.get<number | string>('gpuLayers');
        if (typeof gpuLayers === 'number' || gpuLayers === 'auto') {
            options.gpuLayers = gpuLayers;
        }
        const keepAlive = cfg.get<number>('keepAliveSeconds');
        if (typeof keepAlive === 'number') {
            options.keepAliveS = keepAlive;
        }
        const cacheLimit = cfg.get<string>('cacheSizeLimit', '').trim();
        if (cacheLimit) {
            options.cacheSizeLimit = cacheLimit;
        }
        return options;
    }

    private async startClient(): Promise<LanguageClient> {
        const cfg = vscode.workspace.getConfiguration('vibrant');
        let server: ServerCommand;
        try {
            server = await locateServer({
                serverPath: cfg.get<string>('serverPath', ''),
                pythonPath: cfg.get<string>('pythonPath', 'python3'),
            });
        } catch (err) {
            if (err instanceof ServerNotFoundError) {
                this.missingServer = err.message;
                this.renderStatus();
                this.notifyMissingServer(err.message);
            }
            throw err;
        }
        this.missingServer = undefined;
        this.serverCommand = server;
        this.output.appendLine(
            `Starting the model server (${server.source}): ${[server.command, ...server.args, '--stdio'].join(' ')}`,
        );
        if (this.client) {
            // A client that stopped for good (crashed too often): replace it.
            const old = this.client;
            this.client = undefined;
            await old.dispose().catch(() => undefined);
        }
        const serverOptions: ServerOptions = async () => {
            const child = spawn(server.command, [...server.args, '--stdio'], {
                env: process.env,
                stdio: 'pipe',
            });
            this.process = child;
            this.serverStarts++;
            child.on('error', (err) => this.output.appendLine(`The model server failed to start: ${err.message}`));
            child.on('exit', (code, signal) => {
                if (this.process === child) {
                    this.process = undefined;
                }
                this.output.appendLine(`The model server exited (${signal ?? `code ${code}`}).`);
            });
            return child;
        };
        const clientOptions: LanguageClientOptions = {
            // Custom requests only: no document is synced to the server.
            documentSelector: [],
            outputChannel: this.output,
            revealOutputChannelOn: RevealOutputChannelOn.Never,
            initializationOptions: () => this.initializationOptions(),
            progressOnInitialization: false,
        };
        const client = new LanguageClient('vibrant', 'Vibrant', serverOptions, clientOptions);
        client.onNotification('vibrant/modelStateChanged', (p: ModelStateChanged) => {
            this.setModelState(p.state, p.modelId, p.reason);
        });
        client.onNotification('vibrant/downloadProgress', (p: DownloadProgress) => this.onProgress(p));
        client.onNotification('vibrant/updateAvailable', (p: UpdateAvailable) => this.updateEvents.fire(p));
        client.onDidChangeState((e) => {
            if (e.newState === State.Stopped) {
                this.downloads.clear();
                this.setModelState('unloaded', null, undefined);
            }
        });
        this.client = client;
        try {
            await client.start();
        } catch (err) {
            this.client = undefined;
            this.kill();
            const message = err instanceof Error ? err.message : String(err);
            void vscode.window.showErrorMessage(
                `Vibrant: the model server (${server.command}) did not start: ${message}`,
                'Show Log',
            ).then((choice) => choice && this.output.show(true));
            throw err;
        }
        this.output.appendLine(`Model server running, pid ${this.process?.pid}.`);
        try {
            const status = await client.sendRequest<StatusResult>('vibrant/status');
            this.setModelState(status.state, status.modelId, status.error);
            for (const d of status.downloads) {
                this.onProgress(d);
            }
        } catch (err) {
            this.output.appendLine(`vibrant/status failed: ${String(err)}`);
        }
        return client;
    }

    async stop(): Promise<void> {
        const client = this.client;
        this.client = undefined;
        if (client) {
            try {
                await client.stop(5000);
            } catch (err) {
                this.output.appendLine(`Stopping the model server: ${String(err)}`);
            }
            await client.dispose().catch(() => undefined);
        }
        this.kill();
        this.setModelState('unloaded', null, undefined);
    }

    async restart(): Promise<void> {
        await this.stop();
        await this.ensureClient();
    }

    private kill(): void {
        const child = this.process;
        if (child && child.exitCode === null && child.signalCode === null) {
            child.kill('SIGTERM');
            setTimeout(() => {
                if (child.exitCode === null && child.signalCode === null) {
                    child.kill('SIGKILL');
                }
            }, 3000).unref();
        }
        this.process = undefined;
    }

    private onConfigChanged(e: vscode.ConfigurationChangeEvent): void {
        if (!this.isRunning) {
            return;
        }
        // The model is passed with each completion; the others need a new server.
        const changed = SERVER_SETTINGS.filter((s) => s !== 'model' && e.affectsConfiguration(`vibrant.${s}`));
        if (changed.length > 0) {
            void vscode.window.showInformationMessage(
                `Vibrant: restart the model server to apply ${changed.map((s) => `vibrant.${s}`).join(', ')}?`,
                'Restart',
            ).then(async (choice) => {
                if (choice === 'Restart') {
                    await this.restart();
                }
            });
        }
    }

    // -- what the user sees ----------------------------------------------------------------

    notifyMissingServer(message: string): void {
        const text = `Vibrant: ${message} ${INSTALL_HINT}`;
        this.hooks.messages.push(text);
        void vscode.window.showErrorMessage(text, 'Open Settings', 'Copy Install Command')
            .then(async (choice) => {
                if (choice === 'Open Settings') {
                    await vscode.commands.executeCommand('workbench.action.openSettings', 'vibrant.serverPath');
                } else if (choice === 'Copy Install Command') {
                    await vscode.env.clipboard.writeText('pip install -e /path/to/vibrant-rpc');
                }
            });
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
        this.hooks.messages.push(text);
        void vscode.window.showErrorMessage(text, 'Show Log')
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
        this.hooks.messages.push(text);
        void vscode.window.showInformationMessage(text, 'Download', 'Select Another Model')
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

    get statusText(): string {
        return this.statusItem.text;
    }

    private setModelState(state: ModelState, modelId: string | null, reason: string | null | undefined): void {
        this.modelState = state;
        this.modelId = modelId;
        this.modelReason = reason;
        if (state === 'ready' && modelId) {
            this.notCachedOffered.delete(modelId);
        }
        this.renderStatus();
    }

    private onProgress(p: DownloadProgress): void {
        if (p.state === 'done' || p.state === 'failed' || p.state === 'cancelled') {
            this.downloads.delete(p.modelId);
        } else {
            this.downloads.set(p.modelId, {
                modelId: p.modelId,
                percent: percentOf(p.downloadedBytes, p.totalBytes),
                line: downloadLine(p),
            });
        }
        this.renderStatus();
        this.downloadEvents.fire(p);
    }

    private renderStatus(): void {
        const item = this.statusItem;
        let text: string;
        let tooltip: string;
        item.backgroundColor = undefined;
        const download = [...this.downloads.values()][0];
        if (this.missingServer) {
            text = '$(warning) Vibrant: server not found';
            tooltip = `${this.missingServer} ${INSTALL_HINT}`;
            item.backgroundColor = new vscode.ThemeColor('statusBarItem.warningBackground');
        } else if (download) {
            const pct = download.percent === undefined ? '' : ` ${download.percent}%`;
            text = `$(cloud-download) Vibrant: downloading${pct}`;
            tooltip = `Downloading ${download.modelId}: ${download.line}`;
        } else if (this.modelState === 'loading') {
            text = `$(loading~spin) Vibrant: loading ${this.modelId ?? ''}`.trimEnd();
            tooltip = `Loading ${this.modelId ?? 'the model'}${this.modelReason ? ` (${this.modelReason})` : ''}`;
        } else if (this.modelState === 'ready') {
            text = `$(check) Vibrant: ready · ${this.modelId ?? ''}`;
            tooltip = `${this.modelId} is loaded and completing.`;
        } else if (this.modelState === 'failed') {
            text = '$(error) Vibrant: load failed';
            tooltip = this.modelReason ?? 'The model failed to load; see the Vibrant output.';
            item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
        } else {
            text = '$(circle-outline) Vibrant: not loaded';
            tooltip = this.isRunning
                ? 'No model is loaded; the first completion loads one.'
                : 'The model server starts with the first completion or Vibrant command.';
        }
        item.text = text;
        item.tooltip = `${tooltip}\nClick for Vibrant's commands.`;
        const history = this.hooks.statusHistory;
        if (history[history.length - 1] !== text) {
            history.push(text);
        }
    }

    describeStatus(): string {
        const parts: string[] = [];
        if (!this.isRunning) {
            parts.push('Server not running');
        } else {
            parts.push(`Server running (pid ${this.process?.pid ?? '?'}, ${this.serverCommand?.source ?? ''})`);
        }
        parts.push(
            this.modelState === 'ready'
                ? `${this.modelId} ready`
                : this.modelState === 'loading'
                    ? `loading ${this.modelId}`
                    : this.modelState === 'failed' ? 'load failed' : 'no model loaded',
        );
        for (const d of this.downloads.values()) {
            parts.push(`downloading ${d.modelId}: ${d.line}`);
        }
        return parts.join(' · ');
    }

    dispose(): void {
        void this.stop();
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
