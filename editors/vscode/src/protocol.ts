// The wire types of vibrant-rpc that this extension uses (camelCase, as on the wire).
// The server's protocol/README.md is the reference; these mirror vibrant_rpc/protocol.py.

export type ModelState = 'unloaded' | 'loading' | 'ready' | 'failed';
export type DownloadState =
    'waiting' | 'resolving' | 'downloading' | 'verifying' | 'done' | 'failed' | 'cancelled';

export interface PartialDownloadInfo {
    downloadedBytes: number;
    totalBytes: number | null;
    updatedAt: string | null;
    active: boolean;
}

export interface ModelEntry {
    id: string;
    name: string;
    family: string;
    parameters: string;
    quantization: string;
    contextWindow: number;
    ramRequiredMb: number;
    downloadBytes: number;
    hfRepo: string;
    recommended: boolean;
    description: string;
    deprecated: boolean;
    replacedBy: string | null;
    cached: boolean;
    sizeBytes: number | null;
    lastUsed: string | null;
    useCount: number;
    partial: PartialDownloadInfo | null;
    selected: boolean;
    loaded: boolean;
}

export interface ListModelsResult {
    models: ModelEntry[];
    recommended: string | null;
}

export interface DownloadModelResult {
    modelId: string;
    paths: string[];
    sizeBytes: number;
    sha256: string;
    revision: string | null;
    pruned: string[];
}

export interface DownloadProgress {
    modelId: string;
    file: string;
    downloadedBytes: number;
    totalBytes: number | null;
    bytesPerSecond: number;
    etaSeconds: number | null;
    state: DownloadState;
}

export interface RemoveModelResult {
    modelId: string;
    freedBytes: number;
}

export interface CacheStatsResult {
    cacheDir: string;
    totalBytes: number;
    maxCacheBytes: number | null;
    models: number;
    partialBytes: number;
}

export interface RemovalResult {
    removed: string[];
    freedBytes: number;
}

export interface StatusResult {
    state: ModelState;
    modelId: string | null;
    loadedAt: string | null;
    lastUsed: string | null;
    busy: boolean;
    error: string | null;
    downloads: DownloadProgress[];
}

export interface ModelStateChanged {
    modelId: string | null;
    state: ModelState;
    reason?: string | null;
}

export interface CompleteParams {
    prompt: string;
    suffix?: string;
    maxTokens?: number;
    temperature?: number;
    stop?: string[];
    modelId?: string;
}

export interface CompleteResult {
    text: string;
    modelId: string;
    finishReason: 'stop' | 'length' | 'cancelled';
    usage: { promptTokens: number; completionTokens: number };
    timings: { loadMs: number; totalMs: number };
    fim: boolean;
}

export interface ModelUpdate {
    modelId: string;
    currentRevision: string | null;
    latestRevision: string | null;
    sizeBytes: number | null;
}

export interface CheckUpdatesResult {
    updates: ModelUpdate[];
    checkedAt: string;
}

/** `vibrant/updateAvailable`: the server's background check found a newer file. */
export interface UpdateAvailable {
    modelId: string;
    currentRevision?: string | null;
    latestRevision?: string | null;
    sizeBytes?: number | null;
    [key: string]: unknown;
}

/** JSON-RPC error codes of vibrant-rpc (`data.kind` names them too). */
export const ErrorCode = {
    ModelNotFound: -32001,
    InsufficientRam: -32002,
    DownloadFailed: -32003,
    ChecksumMismatch: -32004,
    ModelLoadFailed: -32005,
    CacheFull: -32006,
    NotCached: -32007,
    MethodNotFound: -32601,
    RequestCancelled: -32800,
} as const;
