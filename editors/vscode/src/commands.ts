// The Vibrant: ... commands.
import * as vscode from 'vscode';
import { WorkDoneProgress, WorkDoneProgressBegin, WorkDoneProgressReport } from 'vscode-languageclient/node';
import { downloadLine, formatAgo, formatBytes, percentOf } from './format';
import {
    CacheStatsResult,
    CheckUpdatesResult,
    DownloadModelResult,
    ErrorCodes as ErrorCode,
    ListModelsResult,
    ModelEntry,
    RemovalResult,
    RemoveModelResult,
    UpdateAvailable,
    UpdateEntry as ModelUpdate,
} from './protocol';
import { errorCode, isCancelled, Vibrant } from './vibrant';

interface Item<T> extends vscode.QuickPickItem {
    value?: T;
}

/** A quick pick, shown through `vibrant.ui` (whose API publishes it). */
function pick<T>(
    vibrant: Vibrant,
    items: Item<T>[],
    options: { title: string; placeholder?: string; matchOnDescription?: boolean; matchOnDetail?: boolean },
): Promise<T | undefined> {
    return new Promise((resolve) => {
        const qp = vscode.window.createQuickPick<Item<T>>();
        qp.title = options.title;
        qp.placeholder = options.placeholder;
        qp.matchOnDescription = options.matchOnDescription ?? true;
        qp.matchOnDetail = options.matchOnDetail ?? false;
        qp.items = items;
        let done = false;
        const finish = (value: T | undefined) => {
            if (!done) {
                done = true;
                resolve(value);
                qp.dispose();
            }
        };
        qp.onDidAccept(() => finish(qp.selectedItems[0]?.value ?? qp.activeItems[0]?.value));
        qp.onDidHide(() => finish(undefined));
        vibrant.ui.showQuickPick(qp);
    });
}

async function listModels(vibrant: Vibrant, scope?: 'all' | 'cached'): Promise<ListModelsResult> {
    return vibrant.client.request<ListModelsResult>('vibrant/listModels', scope ? { scope } : {});
}

function modelItems(result: ListModelsResult, current: string): Item<ModelEntry>[] {
    const rank = (m: ModelEntry) => (m.cached ? 0 : 2) + (m.id === result.recommended ? 0 : 1);
    const models = [...result.models].sort(
        (a, b) => rank(a) - rank(b) || a.ramRequiredMb - b.ramRequiredMb || a.id.localeCompare(b.id),
    );
    return models.map((m) => {
        const tags: string[] = [];
        if (m.id === result.recommended) {
            tags.push('$(star-full) recommended for this machine');
        }
        if (m.cached) {
            tags.push(`$(check) downloaded, ${formatBytes(m.sizeBytes)}`);
        } else if (m.partial) {
            tags.push(`$(cloud-download) partly downloaded, ${formatBytes(m.partial.downloadedBytes)} of ${formatBytes(m.partial.totalBytes ?? m.downloadBytes)}`);
        } else {
            tags.push(`$(cloud) ${formatBytes(m.downloadBytes)} to download`);
        }
        if (m.loaded) {
            tags.push('loaded');
        }
        if (m.deprecated) {
            tags.push(m.replacedBy ? `deprecated: use ${m.replacedBy}` : 'deprecated');
        }
        const label = m.id === current ? `$(pass-filled) ${m.id}` : m.id;
        return {
            label,
            description: tags.join(' · '),
            detail: `${m.name}: ${m.parameters} ${m.quantization}, needs ${formatBytes(m.ramRequiredMb * 1e6)} of RAM${m.description ? `. ${m.description}` : ''}`,
            value: m,
        };
    });
}

export function currentModel(): string {
    return vscode.workspace.getConfiguration('vibrant').get<string>('model', '').trim();
}

// -- Select Model ------------------------------------------------------------------------

export async function selectModel(vibrant: Vibrant, modelId?: string): Promise<string | undefined> {
    try {
        const result = await listModels(vibrant);
        let chosen: ModelEntry | undefined;
        if (typeof modelId === 'string') {
            chosen = result.models.find((m) => m.id === modelId);
            if (!chosen) {
                throw new Error(`no model ${modelId} in the registry`);
            }
        } else {
            chosen = await pick(vibrant, modelItems(result, currentModel()), {
                title: 'Vibrant: Select Model',
                placeholder: 'The model completions come from (downloaded ones first)',
            });
        }
        if (!chosen) {
            return undefined;
        }
        await vscode.workspace.getConfiguration('vibrant').update(
            'model', chosen.id, vscode.ConfigurationTarget.Global,
        );
        if (!chosen.cached) {
            vibrant.offerDownload(chosen.id, chosen.downloadBytes, true);
        } else {
            void vibrant.ui.showMessage('info', `Vibrant: completions now come from ${chosen.id}.`);
        }
        return chosen.id;
    } catch (err) {
        vibrant.showError('Select Model', err);
        return undefined;
    }
}

// -- Download Model (and updates) --------------------------------------------------------

let tokenCounter = 0;

/**
 * Run `vibrant/downloadModel` (or `vibrant/updateModel`) under a cancellable notification that
 * shows bytes, speed and ETA, fed by `vibrant/downloadProgress` (and the `$/progress` reports
 * on our own work-done token when the server sends no notification).
 */
export async function runDownload(
    vibrant: Vibrant,
    modelId: string,
    method: 'vibrant/downloadModel' | 'vibrant/updateModel' = 'vibrant/downloadModel',
): Promise<DownloadModelResult | undefined> {
    const verb = method === 'vibrant/updateModel' ? 'Updating' : 'Downloading';
    const title = `Vibrant: ${verb} ${modelId}`;
    let client;
    try {
        client = await vibrant.client.ensureClient();
    } catch (err) {
        vibrant.showError(`${verb} ${modelId}`, err);
        return undefined;
    }
    const result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title, cancellable: true },
        async (progress, token) => {
            const workDoneToken = `vibrant-vscode-${process.pid}-${++tokenCounter}`;
            let shown = 0; // percent already given to the progress bar
            let fromNotifications = false;
            const report = (message: string, percent: number | undefined) => {
                const increment = percent !== undefined && percent > shown ? percent - shown : undefined;
                if (increment !== undefined) {
                    shown = percent!;
                }
                vibrant.ui.reportProgress(progress, { title, message, increment });
            };
            report('starting…', 0);
            const subscriptions: vscode.Disposable[] = [
                vibrant.client.onDownloadProgress((p) => {
                    if (p.modelId === modelId) {
                        fromNotifications = true;
                        report(downloadLine(p), percentOf(p.downloadedBytes, p.totalBytes));
                    }
                }),
                client.onProgress(WorkDoneProgress.type, workDoneToken, (value) => {
                    if (fromNotifications || value.kind === 'end') {
                        return;
                    }
                    const v = value as WorkDoneProgressBegin | WorkDoneProgressReport;
                    report(v.message ?? '', v.percentage);
                }),
            ];
            try {
                // The token cancels the request ($/cancelRequest); the partial download stays.
                return await client.sendRequest<DownloadModelResult>(method, { modelId, workDoneToken }, token);
            } catch (err) {
                if (isCancelled(err) || token.isCancellationRequested) {
                    const text = `Vibrant: ${verb.toLowerCase()} ${modelId} cancelled; what was downloaded is kept and the next download resumes from there.`;
                    void vibrant.ui.showMessage('info', text);
                    return undefined;
                }
                if (errorCode(err) === ErrorCode.MethodNotFound) {
                    vibrant.showError(`${verb} ${modelId}`, new Error('this vibrant-rpc cannot do that yet; upgrade the server'));
                    return undefined;
                }
                vibrant.showError(`${verb} ${modelId}`, err);
                return undefined;
            } finally {
                for (const s of subscriptions) {
                    s.dispose();
                }
            }
        },
    );
    if (result) {
        const size = typeof result.sizeBytes === 'number' ? ` (${formatBytes(result.sizeBytes)})` : '';
        const text = `Vibrant: ${result.modelId ?? modelId} ${method === 'vibrant/updateModel' ? 'updated' : 'downloaded'}${size}.`;
        const pruned = result.pruned?.length ? ` To stay under the cache limit, ${result.pruned.join(', ')} were removed.` : '';
        void vibrant.ui.showMessage('info', text + pruned);
    }
    return result;
}

export async function downloadModel(vibrant: Vibrant, modelId?: string): Promise<DownloadModelResult | undefined> {
    if (typeof modelId !== 'string') {
        try {
            const result = await listModels(vibrant);
            const items = modelItems(result, currentModel()).filter((i) => !i.value?.cached);
            if (items.length === 0) {
                void vibrant.ui.showMessage('info', 'Vibrant: every model is downloaded already.');
                return undefined;
            }
            modelId = (await pick(vibrant, items, {
                title: 'Vibrant: Download Model',
                placeholder: 'The model to download (the one recommended for this machine first)',
            }))?.id;
        } catch (err) {
            vibrant.showError('Download Model', err);
            return undefined;
        }
        if (!modelId) {
            return undefined;
        }
    }
    return runDownload(vibrant, modelId);
}

// -- Remove Model, Show Cache ------------------------------------------------------------

export async function removeModel(vibrant: Vibrant, modelId?: string, confirm = true): Promise<RemoveModelResult | undefined> {
    try {
        if (typeof modelId !== 'string') {
            const result = await listModels(vibrant, 'cached');
            if (result.models.length === 0) {
                void vibrant.ui.showMessage('info', 'Vibrant: no model is downloaded.');
                return undefined;
            }
            const items: Item<ModelEntry>[] = result.models.map((m) => ({
                label: m.id,
                description: `${formatBytes(m.sizeBytes)}${m.loaded ? ' · loaded' : ''}`,
                detail: `last used ${formatAgo(m.lastUsed)}, ${m.useCount} times`,
                value: m,
            }));
            modelId = (await pick(vibrant, items, { title: 'Vibrant: Remove Model', placeholder: 'The model to delete from disk' }))?.id;
            if (!modelId) {
                return undefined;
            }
        }
        if (confirm) {
            if (!await vibrant.ui.confirm(`Delete ${modelId} from disk? Downloading it again takes time.`, 'Remove')) {
                return undefined;
            }
        }
        const removed = await vibrant.client.request<RemoveModelResult>('vibrant/removeModel', { modelId });
        const text = `Vibrant: removed ${removed.modelId}, freeing ${formatBytes(removed.freedBytes)}.`;
        void vibrant.ui.showMessage('info', text);
        return removed;
    } catch (err) {
        vibrant.showError('Remove Model', err);
        return undefined;
    }
}

type CacheAction = { kind: 'remove' | 'resume'; modelId: string } | { kind: 'clean' };

export async function showCache(vibrant: Vibrant): Promise<CacheStatsResult | undefined> {
    try {
        const [stats, list] = await Promise.all([
            vibrant.client.request<CacheStatsResult>('vibrant/cacheStats'),
            listModels(vibrant, 'all'),
        ]);
        const limit = stats.maxCacheBytes ? ` of ${formatBytes(stats.maxCacheBytes)}` : ' (no limit)';
        const items: Item<CacheAction>[] = [];
        const cached = list.models.filter((m) => m.cached);
        const partial = list.models.filter((m) => !m.cached && m.partial);
        items.push({ label: 'Downloaded models', kind: vscode.QuickPickItemKind.Separator });
        if (cached.length === 0) {
            items.push({ label: 'none yet', description: 'Vibrant: Download Model fetches one' });
        }
        for (const m of cached) {
            items.push({
                label: `$(database) ${m.id}`,
                description: `${formatBytes(m.sizeBytes)}${m.loaded ? ' · loaded' : ''}`,
                detail: `last used ${formatAgo(m.lastUsed)}, ${m.useCount} times · select to remove`,
                value: { kind: 'remove', modelId: m.id },
            });
        }
        if (partial.length > 0) {
            items.push({ label: 'Partial downloads', kind: vscode.QuickPickItemKind.Separator });
            for (const m of partial) {
                const p = m.partial!;
                items.push({
                    label: `$(cloud-download) ${m.id}`,
                    description: `${formatBytes(p.downloadedBytes)} of ${formatBytes(p.totalBytes ?? m.downloadBytes)}${p.active ? ' · downloading now' : ''}`,
                    detail: `updated ${formatAgo(p.updatedAt)} · select to resume`,
                    value: { kind: 'resume', modelId: m.id },
                });
            }
        }
        if (stats.partialBytes > 0) {
            items.push({ label: '', kind: vscode.QuickPickItemKind.Separator });
            items.push({
                label: '$(trash) Remove partial downloads',
                description: formatBytes(stats.partialBytes),
                value: { kind: 'clean' },
            });
        }
        const action = await pick(vibrant, items, {
            title: `Vibrant cache: ${formatBytes(stats.totalBytes)}${limit} in ${stats.cacheDir} · ${stats.models} models · ${formatBytes(stats.partialBytes)} partial`,
            placeholder: 'Downloaded models and partial downloads',
        });
        if (action?.kind === 'remove') {
            await removeModel(vibrant, action.modelId);
        } else if (action?.kind === 'resume') {
            await runDownload(vibrant, action.modelId);
        } else if (action?.kind === 'clean') {
            const removed = await vibrant.client.request<RemovalResult>('vibrant/cleanCache', {});
            void vibrant.ui.showMessage(
                'info', `Vibrant: removed ${removed.removed.length} partial downloads, freeing ${formatBytes(removed.freedBytes)}.`,
            );
        }
        return stats;
    } catch (err) {
        vibrant.showError('Show Cache', err);
        return undefined;
    }
}

// -- updates -------------------------------------------------------------------------------

function updateLine(u: { modelId: string; sizeBytes?: number | null; currentRevision?: string | null; latestRevision?: string | null }): string {
    const details: string[] = [];
    if (u.currentRevision && u.latestRevision) {
        details.push(`${u.currentRevision.slice(0, 7)} → ${u.latestRevision.slice(0, 7)}`);
    }
    if (u.sizeBytes) {
        details.push(formatBytes(u.sizeBytes));
    }
    return details.length ? `${u.modelId} (${details.join(', ')})` : u.modelId;
}

/** The server's `vibrant/updateAvailable`: a notice with an Update action. */
export function onUpdateAvailable(vibrant: Vibrant, u: UpdateAvailable): void {
    const text = `Vibrant: a newer version of ${updateLine(u)} is on the Hub.`;
    void vibrant.ui.showMessage('info', text, 'Update', 'Later').then((choice) => {
        if (choice === 'Update') {
            return runDownload(vibrant, u.modelId, 'vibrant/updateModel');
        }
        return undefined;
    });
}

export async function checkUpdates(vibrant: Vibrant): Promise<CheckUpdatesResult | undefined> {
    let result: CheckUpdatesResult;
    try {
        result = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: 'Vibrant: checking the Hub for model updates…', cancellable: true },
            (_progress, token) => vibrant.client.request<CheckUpdatesResult>('vibrant/checkUpdates', {}, token),
        );
    } catch (err) {
        if (errorCode(err) === ErrorCode.MethodNotFound) {
            vibrant.showError('Check for Updates', new Error('this vibrant-rpc has no update check; upgrade the server'));
        } else {
            vibrant.showError('Check for Updates', err);
        }
        return undefined;
    }
    const updates: ModelUpdate[] = result.updates ?? [];
    if (updates.length === 0) {
        const text = 'Vibrant: every downloaded model is up to date.';
        void vibrant.ui.showMessage('info', text);
        return result;
    }
    const text = updates.length === 1
        ? `Vibrant: an update of ${updateLine(updates[0])} is available.`
        : `Vibrant: updates are available for ${updates.map(updateLine).join(', ')}.`;
    void vibrant.ui.showMessage('info', text, updates.length === 1 ? 'Update' : 'Update All', 'Later')
        .then(async (choice) => {
            if (choice === 'Update' || choice === 'Update All') {
                for (const u of updates) {
                    await runDownload(vibrant, u.modelId, 'vibrant/updateModel');
                }
            }
        });
    return result;
}

export async function updateModel(vibrant: Vibrant, modelId?: string): Promise<DownloadModelResult | undefined> {
    if (typeof modelId === 'string') {
        return runDownload(vibrant, modelId, 'vibrant/updateModel');
    }
    let result: CheckUpdatesResult;
    try {
        result = await vibrant.client.request<CheckUpdatesResult>('vibrant/checkUpdates', {});
    } catch (err) {
        vibrant.showError('Update Model', errorCode(err) === ErrorCode.MethodNotFound
            ? new Error('this vibrant-rpc has no update check; upgrade the server') : err);
        return undefined;
    }
    if (result.updates.length === 0) {
        void vibrant.ui.showMessage('info', 'Vibrant: every downloaded model is up to date.');
        return undefined;
    }
    const chosen = await pick(vibrant, result.updates.map((u) => ({
        label: u.modelId,
        description: u.sizeBytes ? formatBytes(u.sizeBytes) : undefined,
        detail: `${(u.currentRevision ?? '?').slice(0, 7)} → ${(u.latestRevision ?? '?').slice(0, 7)}`,
        value: u.modelId,
    })), { title: 'Vibrant: Update Model', placeholder: 'The model to update (the old file stays until the new one is verified)' });
    return chosen ? runDownload(vibrant, chosen, 'vibrant/updateModel') : undefined;
}

// -- Show Status -------------------------------------------------------------------------

export async function showStatus(vibrant: Vibrant): Promise<void> {
    const commands: Item<string>[] = [
        { label: '$(list-selection) Select Model', value: 'vibrant.selectModel' },
        { label: '$(cloud-download) Download Model', value: 'vibrant.downloadModel' },
        { label: '$(database) Show Cache', value: 'vibrant.showCache' },
        { label: '$(trash) Remove Model', value: 'vibrant.removeModel' },
        { label: '$(sync) Check for Updates', value: 'vibrant.checkUpdates' },
        { label: '$(arrow-circle-up) Update Model', value: 'vibrant.updateModel' },
        { label: '$(debug-restart) Restart Server', value: 'vibrant.restartServer' },
        { label: '$(output) Show Log', value: 'vibrant.showLog' },
    ];
    const command = await pick(vibrant, commands, { title: `Vibrant: ${vibrant.client.describe()}`, placeholder: 'Vibrant commands' });
    if (command) {
        await vscode.commands.executeCommand(command);
    }
}
