// Finding the server: `vibrant.serverPath`, else `vibrant-rpc` on PATH, else
// `python -m vibrant_rpc` with `vibrant.pythonPath`.
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export interface ServerCommand {
    command: string;
    args: string[];
    /** How it was found, for the log: "vibrant.serverPath", "PATH" or "vibrant.pythonPath". */
    source: string;
}

export interface LocatorSettings {
    serverPath: string;
    pythonPath: string;
}

export class ServerNotFoundError extends Error {
    constructor(message: string, readonly tried: string[]) {
        super(message);
        this.name = 'ServerNotFoundError';
    }
}

export const INSTALL_HINT =
    'Install it from its repository with `pip install -e /path/to/vibrant-rpc` (in the Python ' +
    'that `vibrant.pythonPath` names), or set `vibrant.serverPath` to the `vibrant-rpc` executable.';

function isExecutable(file: string): boolean {
    try {
        const st = fs.statSync(file);
        if (!st.isFile()) {
            return false;
        }
        fs.accessSync(file, fs.constants.X_OK);
        return true;
    } catch {
        return false;
    }
}

function expandHome(p: string): string {
    if (p === '~' || p.startsWith('~/')) {
        return path.join(process.env.HOME ?? '', p.slice(1));
    }
    return p;
}

/** `name` on PATH (with PATHEXT on Windows), or undefined. */
export function which(name: string, envPath = process.env.PATH ?? ''): string | undefined {
    const exts = process.platform === 'win32'
        ? (process.env.PATHEXT ?? '.EXE;.CMD;.BAT').split(';')
        : [''];
    for (const dir of envPath.split(path.delimiter)) {
        if (!dir) {
            continue;
        }
        for (const ext of exts) {
            const candidate = path.join(dir, name + ext);
            if (isExecutable(candidate)) {
                return candidate;
            }
        }
    }
    return undefined;
}

function pythonHasServer(python: string): Promise<boolean> {
    return new Promise((resolve) => {
        execFile(
            python,
            ['-c', 'import importlib.util, sys; sys.exit(importlib.util.find_spec("vibrant_rpc") is None)'],
            { timeout: 15000 },
            (error) => resolve(!error),
        );
    });
}

export async function locateServer(settings: LocatorSettings): Promise<ServerCommand> {
    const tried: string[] = [];
    const configured = settings.serverPath.trim();
    if (configured) {
        const file = expandHome(configured);
        if (isExecutable(file)) {
            return { command: file, args: [], source: 'vibrant.serverPath' };
        }
        const found = !path.isAbsolute(file) ? which(file) : undefined;
        if (found) {
            return { command: found, args: [], source: 'vibrant.serverPath' };
        }
        throw new ServerNotFoundError(
            `\`vibrant.serverPath\` is set to ${configured}, which is not an executable file.`,
            [configured],
        );
    }
    const onPath = which('vibrant-rpc');
    if (onPath) {
        return { command: onPath, args: [], source: 'PATH' };
    }
    tried.push('vibrant-rpc on PATH');
    const python = expandHome(settings.pythonPath.trim() || 'python3');
    if (await pythonHasServer(python)) {
        return { command: python, args: ['-m', 'vibrant_rpc'], source: 'vibrant.pythonPath' };
    }
    tried.push(`${python} -m vibrant_rpc`);
    throw new ServerNotFoundError(
        `The vibrant model server was not found (tried ${tried.join(' and ')}).`,
        tried,
    );
}
