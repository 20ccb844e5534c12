#!/usr/bin/env node
// Runs the extension's integration suite in a real VS Code: code-server 4.100.3 on 127.0.0.1,
// opened in Debian's Chromium driven by playwright-core, with VS Code's own test hook (the
// `payload` URL parameter: extensionDevelopmentPath + extensionTestsPath). While it runs it
// takes a screenshot of the download notification. Exits with the suite's exit code.
//
//   node test/runner.mjs --env DIR --workspace DIR --state DIR --artifacts DIR [--settings JSON]
//
// DIR of --env is what scripts/setup-vscode.sh installed (its paths.json). The environment
// (VIBRANT_HOME, HF_ENDPOINT, ...) passes through code-server to the extension host and on
// to the vibrant-rpc the extension spawns.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const extDir = path.resolve(here, '..');

function parseArgs(argv) {
    const args = { settings: '{}', timeout: '240' };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, '');
        args[key] = argv[i + 1];
    }
    for (const required of ['env', 'workspace', 'state', 'artifacts']) {
        if (!args[required]) {
            throw new Error(`--${required} is required`);
        }
    }
    return args;
}

const args = parseArgs(process.argv.slice(2));
const t0 = Date.now();
const log = (line) => process.stdout.write(`[runner ${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`);
const paths = JSON.parse(fs.readFileSync(path.join(args.env, 'paths.json'), 'utf8'));
const require = createRequire(path.join(paths.playwrightCore, 'package.json'));
const { chromium } = require(paths.playwrightCore);

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

async function waitHealthy(url, child, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
        if (child.exitCode !== null) {
            throw new Error(`code-server exited with ${child.exitCode}`);
        }
        try {
            const res = await fetch(url);
            if (res.ok) {
                return;
            }
        } catch {
            // not listening yet
        }
        await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`code-server did not answer ${url} within ${timeoutMs} ms`);
}

const state = path.resolve(args.state);
const artifacts = path.resolve(args.artifacts);
const workspace = path.resolve(args.workspace);
fs.mkdirSync(artifacts, { recursive: true });
for (const dir of ['user/User', 'ext', 'xdg/data', 'xdg/config', 'xdg/cache']) {
    fs.mkdirSync(path.join(state, dir), { recursive: true });
}
fs.mkdirSync(workspace, { recursive: true });
const settings = {
    'workbench.startupEditor': 'none',
    'workbench.tips.enabled': false,
    'security.workspace.trust.enabled': false,
    'telemetry.telemetryLevel': 'off',
    'update.mode': 'none',
    'extensions.autoCheckUpdates': false,
    'extensions.autoUpdate': false,
    'editor.inlineSuggest.enabled': true,
    ...JSON.parse(args.settings),
};
fs.writeFileSync(path.join(state, 'user/User/settings.json'), JSON.stringify(settings, null, 2));
const config = path.join(state, 'config.yaml');
fs.writeFileSync(config, 'auth: none\ncert: false\n');

const port = await freePort();
const origin = `http://127.0.0.1:${port}`;
const csLog = fs.openSync(path.join(artifacts, 'code-server.log'), 'w');
const codeServer = spawn(process.execPath, [
    paths.codeServer,
    '--config', config,
    '--bind-addr', `127.0.0.1:${port}`,
    '--auth', 'none',
    '--disable-telemetry',
    '--disable-update-check',
    '--disable-workspace-trust',
    '--disable-getting-started-override',
    '--user-data-dir', path.join(state, 'user'),
    '--extensions-dir', path.join(state, 'ext'),
    workspace,
], {
    env: {
        ...process.env,
        EXTENSIONS_GALLERY: '{"serviceUrl":""}',
        XDG_DATA_HOME: path.join(state, 'xdg/data'),
        XDG_CONFIG_HOME: path.join(state, 'xdg/config'),
        XDG_CACHE_HOME: path.join(state, 'xdg/cache'),
    },
    stdio: ['ignore', csLog, csLog],
    detached: true, // its own process group: we end it, its extension host and the server
});

let browser;
let exitCode = 1;
let stopping = false; // the page watcher stops
let killed = false;
function shutdown() {
    if (killed) {
        return;
    }
    killed = true;
    try {
        process.kill(-codeServer.pid, 'SIGTERM'); // code-server, its extension host, the server
    } catch {
        // gone already
    }
}
process.on('SIGTERM', () => {
    stopping = true;
    shutdown();
    process.exit(143);
});

try {
    await waitHealthy(`${origin}/healthz`, codeServer, 30000);
    log(`code-server ${origin} is up`);
    browser = await chromium.launch({
        executablePath: paths.chromium,
        headless: true,
        args: [
            '--no-sandbox', '--disable-gpu', '--disable-background-networking',
            '--disable-component-update', '--disable-sync', '--no-first-run',
        ],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Nothing leaves the machine: every request not to 127.0.0.1 is aborted.
    await context.route('**/*', (route) => {
        const url = new URL(route.request().url());
        if (['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol) && url.hostname !== '127.0.0.1') {
            log(`aborted a request to ${url.origin}`);
            return route.abort();
        }
        return route.continue();
    });
    const page = await context.newPage();
    let resolveExit;
    const exited = new Promise((resolve) => {
        resolveExit = resolve;
    });
    await page.exposeFunction('codeAutomationExit', (code) => resolveExit(Number(code)));
    await page.exposeFunction('codeAutomationLog', (type, logArgs) => {
        const text = Array.isArray(logArgs) ? logArgs.join(' ') : String(logArgs);
        if (/\[suite|vibrant|Vibrant|error/i.test(text)) {
            log(`page ${type}: ${text.slice(0, 2000)}`);
        }
    });
    page.on('pageerror', (err) => log(`page error: ${err.message}`));

    const remote = (p) => `vscode-remote://127.0.0.1:${port}${p}`;
    const payload = [
        ['extensionDevelopmentPath', remote(extDir)],
        ['extensionTestsPath', remote(path.join(extDir, 'out/test/suite/index.js'))],
        ['skipWelcome', 'true'],
    ];
    const url = `${origin}/?folder=${encodeURIComponent(workspace)}&payload=${encodeURIComponent(JSON.stringify(payload))}`;

    // Watch the page as a person would: photograph the download notification once its bar
    // is well on its way, and the inline suggestion's ghost text; note the status bar's texts.
    const screenshot = path.join(artifacts, 'download-notification.png');
    fs.rmSync(screenshot, { force: true });
    let shot = false;
    let ghostShot = false;
    let cancelClicked = false;
    const statusSeen = [];
    const model = process.env.VIBRANT_TEST_MODEL ?? 'gemma-270m';
    const cancelModel = process.env.VIBRANT_TEST_CANCEL_MODEL; // the suite expects us to cancel it
    const watcher = (async () => {
        const toast = page.locator('.notification-toast', { hasText: `Downloading ${model}:` }).first();
        const cancelToast = page.locator('.notification-toast', { hasText: `Downloading ${cancelModel}:` }).first();
        const status = page.locator('.statusbar-item', { hasText: 'Vibrant' }).first();
        const ghost = page.locator('.ghost-text-decoration, .ghost-text').first();
        while (!stopping) {
            try {
                if (await status.count()) {
                    const text = (await status.innerText({ timeout: 500 })).trim();
                    if (text && statusSeen[statusSeen.length - 1] !== text) {
                        statusSeen.push(text);
                    }
                }
                if (!shot && await toast.count()) {
                    const text = await toast.innerText({ timeout: 500 });
                    const m = /([\d.]+) MB of ([\d.]+) MB · .*MB\/s · .* left/.exec(text);
                    if (m && Number(m[1]) / Number(m[2]) >= 0.3) {
                        await page.screenshot({ path: screenshot });
                        await toast.screenshot({ path: path.join(artifacts, 'download-notification-toast.png') });
                        shot = true;
                        log(`download notification: ${JSON.stringify(text)}`);
                    }
                }
                if (cancelModel && !cancelClicked && await cancelToast.count()) {
                    // A person pressing the notification's Cancel button part way through.
                    const text = await cancelToast.innerText({ timeout: 500 });
                    const m = /([\d.]+) MB of ([\d.]+) MB/.exec(text);
                    if (m && Number(m[1]) / Number(m[2]) >= 0.2) {
                        await cancelToast.getByRole('button', { name: 'Cancel' }).click({ timeout: 2000 });
                        cancelClicked = true;
                        log(`clicked Cancel on ${JSON.stringify(text)}`);
                    }
                }
                if (!ghostShot && await ghost.count()) {
                    await page.screenshot({ path: path.join(artifacts, 'inline-completion.png') });
                    ghostShot = true;
                    log('inline suggestion shown as ghost text');
                }
            } catch {
                // the element changed while we looked
            }
            await new Promise((r) => setTimeout(r, 100));
        }
    })();

    await page.goto(url);
    log('workbench loading; the suite runs in the extension host');
    const timeoutMs = Number(args.timeout) * 1000;
    const code = await Promise.race([
        exited,
        new Promise((resolve) => setTimeout(() => resolve('timeout'), timeoutMs)),
    ]);
    await page.screenshot({ path: path.join(artifacts, 'final.png') }).catch(() => undefined);
    stopping = true;
    await watcher;
    log(`status bar item texts seen in the page: ${statusSeen.map((t) => JSON.stringify(t)).join(' → ')}`);
    if (code === 'timeout') {
        log(`the suite did not finish within ${args.timeout} s`);
        exitCode = 124;
    } else {
        log(`the suite exited with ${code}`);
        exitCode = code;
        if (code === 0 && !shot) {
            log('FAIL: the download notification never showed bytes, speed and ETA (no screenshot)');
            exitCode = 3;
        }
        for (const expected of [/Vibrant: not loaded/, /Vibrant: downloading \d+%/, /Vibrant: loading/, /Vibrant: ready/]) {
            if (code === 0 && !statusSeen.some((t) => expected.test(t))) {
                log(`FAIL: the status bar never showed ${expected}`);
                exitCode = 3;
            }
        }
    }
} catch (err) {
    log(`runner failed: ${err?.stack ?? err}`);
    exitCode = 2;
} finally {
    await browser?.close().catch(() => undefined);
    shutdown();
}
process.exit(exitCode);
