// The language client: vibrant-rpc over stdio, started on first use (never at activation),
// and what the server says about itself: the model's state, downloads, available updates,
// and the team engine completions go to (its health and model, and which engine answered).
import { ChildProcess, spawn } from 'child_process';
import * as vscode from 'vscode';
import {
    LanguageClient,
    LanguageClientOptions,
    RevealOutputChannelOn,
    ServerOptions,
    State,
} from 'vscode-languageclient/node';
import { downloadLine, percentOf } from './format';
import {
    CompleteResult, DownloadProgress, EngineInfo, ErrorCodes, ModelState, ModelStateChanged, StatusResult,
    UpdateAvailable,
} from './protocol';
import { INSTALL_HINT, locateServer, ServerCommand, ServerNotFoundError } from './serverLocator';
import { initializationOptions, SERVER_SETTING_OF } from './settings';
import { Ui } from './ui';

export interface DownloadStatus {
    modelId: string;
    percent: number | undefined;
    line: string;
}

/** What the server last said about itself (the status bar shows it). */
export interface ServerState {
    readonly running: boolean;
    readonly model: ModelState;
    readonly modelId: string | null;
    readonly reason: string | null | undefined;
    /** Running downloads, oldest first. */
    readonly downloads: readonly DownloadStatus[];
    /** Why the server could not be found, until it is. */
    readonly missingServer: string | undefined;
    /** The team engine completions go to (the `engine` setting), as the server last saw it;
     * null: this machine's model. */
    readonly engine: EngineInfo | null;
    /** Which engine answered the last completion ("local" or the engine's name), and why
     * the local model did when an engine was asked. */
    readonly answeredBy: string | undefined;
    readonly fallbackReason: string | null | undefined;
}

// The errors of a completion the engine's health explains: ask the server for it again.
const ENGINE_ERRORS: readonly number[] = [
    ErrorCodes.EngineError, ErrorCodes.EngineUnreachable, ErrorCodes.EngineKeyRefused, ErrorCodes.ModelNotServed,
];
// The server checks the engine just after it starts: how long the status is asked for it.
const ENGINE_CHECK_WAIT_MS = 30000;

// The settings whose change needs a new server: what it is sent, and where to find it.
const SERVER_SETTINGS = [...Object.keys(SERVER_SETTING_OF), 'serverPath', 'pythonPath'];

export class ServerClient implements vscode.Disposable {
    private client: LanguageClient | undefined;
    private starting: Promise<LanguageClient> | undefined;
    private process: ChildProcess | undefined;
    private serverCommand: ServerCommand | undefined;
    private missingServer: string | undefined;
    private model: ModelState = 'unloaded';
    private modelId: string | null = null;
    private reason: string | null | undefined;
    private engine: EngineInfo | null = null;
    private answeredBy: string | undefined;
    private fallbackReason: string | null | undefined;
    private readonly downloads = new Map<string, DownloadStatus>();
    private readonly stateEvents = new vscode.EventEmitter<ServerState>();
    private readonly downloadEvents = new vscode.EventEmitter<DownloadProgress>();
    private readonly updateEvents = new vscode.EventEmitter<UpdateAvailable>();
    private readonly disposables: vscode.Disposable[];
    /** Whenever `state` changes. */
    readonly onDidChangeState = this.stateEvents.event;
    /** Every `vibrant/downloadProgress` notification. */
    readonly onDownloadProgress = this.downloadEvents.event;
    /** Every `vibrant/updateAvailable` notification. */
    readonly onUpdateAvailable = this.updateEvents.event;
    /** How many times a server process was spawned (0 until the first command). */
    serverStarts = 0;

    constructor(private readonly output: vscode.OutputChannel, private readonly ui: Ui) {
        this.disposables = [
            this.stateEvents, this.downloadEvents, this.updateEvents,
            vscode.workspace.onDidChangeConfiguration((e) => this.onConfigChanged(e)),
        ];
    }

    get isRunning(): boolean {
        return this.client !== undefined && this.client.state === State.Running;
    }

    get serverPid(): number | undefined {
        return this.isRunning ? this.process?.pid : undefined;
    }

    get state(): ServerState {
        return {
            running: this.isRunning,
            model: this.model,
            modelId: this.modelId,
            reason: this.reason,
            downloads: [...this.downloads.values()],
            missingServer: this.missingServer,
            engine: this.engine,
            answeredBy: this.answeredBy,
            fallbackReason: this.fallbackReason,
        };
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
        return initializationOptions((name) => {
            const set = cfg.inspect(name);
            return set?.workspaceFolderValue ?? set?.workspaceValue ?? set?.globalValue;
        });
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
                this.stateEvents.fire(this.state);
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
            void this.ui.showMessage(
                'error', `Vibrant: the model server (${server.command}) did not start: ${message}`, 'Show Log',
            ).then((choice) => choice && this.output.show(true));
            throw err;
        }
        this.output.appendLine(`Model server running, pid ${this.process?.pid}.`);
        const status = await this.fetchStatus(client);
        for (const d of status?.downloads ?? []) {
            this.onProgress(d);
        }
        if (status?.engine && !status.engine.checkedAt) {
            void this.awaitEngineCheck(client);
        }
        return client;
    }

    /** Ask the server's status (memory only: what its last check or completion learnt) and
     * show it: the model's state and the engine's. Undefined when it could not be asked. */
    async refreshStatus(): Promise<StatusResult | undefined> {
        return this.isRunning && this.client ? this.fetchStatus(this.client) : undefined;
    }

    private async fetchStatus(client: LanguageClient): Promise<StatusResult | undefined> {
        try {
            const status = await client.sendRequest<StatusResult>('vibrant/status');
            if (this.client !== client) {
                return undefined; // a status of a server since stopped
            }
            this.engine = status.engine ?? null;
            this.setModelState(status.state, status.modelId, status.error);
            return status;
        } catch (err) {
            this.output.appendLine(`vibrant/status failed: ${String(err)}`);
            return undefined;
        }
    }

    /** The server checks its engine in the background as it starts: show the result. */
    private async awaitEngineCheck(client: LanguageClient): Promise<void> {
        const deadline = Date.now() + ENGINE_CHECK_WAIT_MS;
        while (Date.now() < deadline && this.client === client) {
            await new Promise((resolve) => setTimeout(resolve, 500));
            const status = await this.fetchStatus(client);
            if (!status || !status.engine || status.engine.checkedAt) {
                return;
            }
        }
    }

    /** A completion's answer: when another engine wrote it than the last one (the local
     * model took over, or the engine is back), show it and ask the engine's health anew. */
    noteAnswer(result: CompleteResult): void {
        if (result.engine === this.answeredBy && result.fallbackReason === this.fallbackReason) {
            return;
        }
        this.answeredBy = result.engine;
        this.fallbackReason = result.fallbackReason;
        this.stateEvents.fire(this.state);
        void this.refreshStatus();
    }

    /** A completion's error: the engine's, and its health shown anew. */
    noteError(err: unknown): void {
        const code = (err as { code?: unknown } | undefined)?.code;
        if (typeof code === 'number' && ENGINE_ERRORS.includes(code)) {
            void this.refreshStatus();
        }
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
        this.engine = null;
        this.answeredBy = undefined;
        this.fallbackReason = undefined;
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
            void this.ui.showMessage(
                'info',
                `Vibrant: restart the model server to apply ${changed.map((s) => `vibrant.${s}`).join(', ')}?`,
                'Restart',
            ).then(async (choice) => {
                if (choice === 'Restart') {
                    await this.restart();
                }
            });
        }
    }

    private notifyMissingServer(message: string): void {
        void this.ui.showMessage('error', `Vibrant: ${message} ${INSTALL_HINT}`, 'Open Settings', 'Copy Install Command')
            .then(async (choice) => {
                if (choice === 'Open Settings') {
                    await vscode.commands.executeCommand('workbench.action.openSettings', 'vibrant.serverPath');
                } else if (choice === 'Copy Install Command') {
                    await vscode.env.clipboard.writeText('pip install -e /path/to/vibrant-rpc');
                }
            });
    }

    private setModelState(state: ModelState, modelId: string | null, reason: string | null | undefined): void {
        this.model = state;
        this.modelId = modelId;
        this.reason = reason;
        this.stateEvents.fire(this.state);
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
        this.stateEvents.fire(this.state);
        this.downloadEvents.fire(p);
    }

    /** One line for the Show Status picker's title. */
    describe(): string {
        const parts: string[] = [];
        if (!this.isRunning) {
            parts.push('Server not running');
        } else {
            parts.push(`Server running (pid ${this.process?.pid ?? '?'}, ${this.serverCommand?.source ?? ''})`);
        }
        parts.push(
            this.model === 'ready'
                ? `${this.modelId} ready`
                : this.model === 'loading'
                    ? `loading ${this.modelId}`
                    : this.model === 'failed' ? 'load failed' : 'no model loaded',
        );
        for (const d of this.downloads.values()) {
            parts.push(`downloading ${d.modelId}: ${d.line}`);
        }
        const e = this.engine;
        if (e) {
            const health = e.healthy === true ? 'healthy' : e.healthy === false ? 'not healthy' : 'not checked yet';
            parts.push(`engine ${e.name} (${e.model ?? 'model not known yet'}, ${health})`);
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
