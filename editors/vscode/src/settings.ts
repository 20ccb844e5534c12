// Which of the extension's settings (`vibrant.<name>` in package.json) the server reads, and
// under which of its names; the rest are the extension's own. No `vscode` import: tests run
// it under plain Node and check package.json against it (tests/unit/protocol/test_protocol_ts.py).
import { ServerSetting } from './protocol';

/** VS Code setting → the server setting it is sent as, in `initializationOptions`. */
export const SERVER_SETTING_OF: Readonly<Record<string, ServerSetting>> = {
    model: 'model',
    contextSize: 'contextSize',
    threads: 'threads',
    gpuLayers: 'gpuLayers',
    keepAliveSeconds: 'keepAliveS',
    cacheSizeLimit: 'cacheSizeLimit',
};

/** Settings the server never sees: where to find it, and the inline completions' own. */
export const CLIENT_ONLY_SETTINGS: readonly string[] = ['serverPath', 'pythonPath', 'inlineCompletions.*'];

/** Whether `name` (without `vibrant.`) is one of CLIENT_ONLY_SETTINGS (`x.*`: a group). */
export function isClientOnly(name: string): boolean {
    return CLIENT_ONLY_SETTINGS.some((s) => (s.endsWith('.*') ? name.startsWith(s.slice(0, -1)) : name === s));
}
