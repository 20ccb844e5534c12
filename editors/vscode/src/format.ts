// Human-readable sizes, speeds and durations for notifications and the status bar.

export function formatBytes(bytes: number | null | undefined): string {
    if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) {
        return '?';
    }
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
        value /= 1000;
        unit++;
    }
    const digits = unit === 0 ? 0 : value >= 100 ? 0 : 1;
    return `${value.toFixed(digits)} ${units[unit]}`;
}

export function formatDuration(seconds: number | null | undefined): string {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
        return '?';
    }
    const s = Math.round(seconds);
    if (s < 60) {
        return `${s} s`;
    }
    if (s < 3600) {
        return `${Math.floor(s / 60)} min ${s % 60} s`;
    }
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function formatAgo(iso: string | null | undefined, now = Date.now()): string {
    if (!iso) {
        return 'never';
    }
    const t = Date.parse(iso);
    if (Number.isNaN(t)) {
        return 'never';
    }
    const s = Math.max(0, (now - t) / 1000);
    if (s < 60) {
        return 'just now';
    }
    if (s < 3600) {
        return `${Math.floor(s / 60)} min ago`;
    }
    if (s < 86400) {
        return `${Math.floor(s / 3600)} h ago`;
    }
    return `${Math.floor(s / 86400)} days ago`;
}

/** "123 MB of 253 MB · 45.2 MB/s · 3 s left", the download notification's line. */
export function downloadLine(p: {
    downloadedBytes: number;
    totalBytes: number | null;
    bytesPerSecond: number;
    etaSeconds: number | null;
    state: string;
}): string {
    const done = p.totalBytes
        ? `${formatBytes(p.downloadedBytes)} of ${formatBytes(p.totalBytes)}`
        : formatBytes(p.downloadedBytes);
    switch (p.state) {
        case 'waiting':
            return 'waiting for another download of this model';
        case 'resolving':
            return 'asking the Hub for the files';
        case 'verifying':
            return `${done} · verifying the SHA-256`;
        case 'done':
            return `${done} · done`;
        case 'downloading': {
            const parts = [done];
            if (p.bytesPerSecond > 0) {
                parts.push(`${formatBytes(p.bytesPerSecond)}/s`);
            }
            if (p.etaSeconds !== null && p.etaSeconds !== undefined) {
                parts.push(`${formatDuration(p.etaSeconds)} left`);
            }
            return parts.join(' · ');
        }
        default:
            return `${done} · ${p.state}`;
    }
}

export function percentOf(downloaded: number, total: number | null): number | undefined {
    if (!total || total <= 0) {
        return undefined;
    }
    return Math.min(100, Math.floor((downloaded * 100) / total));
}
