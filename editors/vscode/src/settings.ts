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
    engine: 'engine',
    engines: 'engines',
};

/** `initializationOptions` from the server settings the user set: `userValue(name)` gives the
 * value set for `vibrant.<name>` (undefined where unset). An unset one is left out, so that
 * `~/.vibrant/config.toml` and the server's own defaults apply: package.json's default sent
 * instead would hide them (`gpu_layers = "auto"`, a `keep_alive_s` in config.toml). Empty
 * (`""`, null) means unset too. The server checks the values and warns about a bad one. */
export function initializationOptions(userValue: (name: string) => unknown): Record<string, unknown> {
    const options: Record<string, unknown> = {};
    for (const [name, server] of Object.entries(SERVER_SETTING_OF)) {
        let value = userValue(name);
        if (typeof value === 'string') {
            value = value.trim();
        }
        if (value !== undefined && value !== null && value !== '') {
            options[server] = value;
        }
    }
    return options;
}

/** Settings the server never sees: where to find it, and the inline completions' own. */
export const CLIENT_ONLY_SETTINGS: readonly string[] = ['serverPath', 'pythonPath', 'inlineCompletions.*'];

/** Whether `name` (without `vibrant.`) is one of CLIENT_ONLY_SETTINGS (`x.*`: a group). */
export function isClientOnly(name: string): boolean {
    return CLIENT_ONLY_SETTINGS.some((s) => (s.endsWith('.*') ? name.startsWith(s.slice(0, -1)) : name === s));
}
