/**
 * The playground page the gateway serves at `GET /`: asks for a credential when the
 * gateway requires one, fills the language picker from `GET /v1/runtimes`, connects
 * with the TypeScript client, and runs the editor's code in one named session per tab,
 * each run in a pane of its own (its rich output too: an `update_display` replaces what
 * its `display_id` shows in any pane of the tab). The session is opened with a workspace (its files show
 * in the tree beside the editor, files.ts) and every run starts in it; a gateway that
 * keeps no workspaces gets the page without the tree. The session's name, the last
 * sequence shown and the panes are kept in session storage (store.ts), so a reload
 * attaches to the session again from that sequence and the runs' output goes on where it
 * was.
 */

import {
  type Catalog,
  type ExecuteOptions,
  type RuntimeInfo,
  SluiceClient,
  type SluiceError,
  type SluiceEvent,
} from '../../clients/typescript/src/index.js';
import { type Editor, makeEditor } from './editor.js';
import { FileTree } from './files.js';
import { pieceSize } from './output.js';
import { type Pane, type PaneHost, RunPane, TerminalPane } from './panes.js';
import type { Rich } from './rich.js';
import { loadPage, loadToken, SAVED_IN_ALL, type SavedPage, type SavedRequest, savePage, saveToken } from './store.js';

const MiB = 1 << 20;

const SAMPLES: Record<string, string> = {
  py: 'name = input("Your name? ")\nprint(f"Hello, {name}!")\n',
  js: 'const lines = require("fs").readFileSync(0, "utf8").split("\\n");\nconsole.log("Hello, " + (lines[0] || "world") + "!");\n',
  sh: 'read -r name\necho "Hello, $name!"\n',
  bash: 'read -r name\necho "Hello, $name!"\n',
};

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node as T;
}

const ui = {
  language: byId<HTMLSelectElement>('language'),
  run: byId<HTMLButtonElement>('run'),
  tty: byId<HTMLInputElement>('tty'),
  keep: byId<HTMLInputElement>('keep'),
  restart: byId<HTMLButtonElement>('restart'),
  shell: byId<HTMLButtonElement>('shell'),
  timeout: byId<HTMLInputElement>('timeout'),
  output: byId<HTMLInputElement>('output-limit'),
  status: byId<HTMLElement>('status'),
  notice: byId<HTMLElement>('notice'),
  editor: byId<HTMLElement>('editor'),
  runs: byId<HTMLElement>('runs'),
  empty: byId<HTMLElement>('runs-empty'),
  files: byId<HTMLElement>('files'),
  dialog: byId<HTMLDialogElement>('token-dialog'),
  tokenForm: byId<HTMLFormElement>('token-form'),
  token: byId<HTMLInputElement>('token'),
  tokenError: byId<HTMLElement>('token-error'),
};

function setStatus(state: string, words: string): void {
  ui.status.dataset['state'] = state;
  ui.status.textContent = words;
}

/** `GET /v1/runtimes`, with the credential when there is one; `undefined` on HTTP 401. */
async function fetchCatalog(token: string | undefined): Promise<Catalog | undefined> {
  const headers: Record<string, string> = {};
  if (token !== undefined) headers['authorization'] = `Bearer ${token}`;
  const answer = await fetch('/v1/runtimes', { headers, cache: 'no-store' });
  if (answer.status === 401) return undefined;
  if (!answer.ok) throw new Error(`GET /v1/runtimes answered HTTP ${answer.status}: ${(await answer.text()).trim()}`);
  return (await answer.json()) as Catalog;
}

/** Asks for a credential until the gateway takes one. */
function askToken(why: string): Promise<string> {
  ui.tokenError.textContent = why;
  ui.token.value = '';
  ui.dialog.showModal();
  ui.token.focus();
  return new Promise((resolve) => {
    const submitted = (event: SubmitEvent): void => {
      event.preventDefault();
      const token = ui.token.value.trim();
      if (!token) return;
      ui.tokenForm.removeEventListener('submit', submitted);
      ui.dialog.close();
      resolve(token);
    };
    ui.tokenForm.addEventListener('submit', submitted);
  });
}

/** The catalog and the credential it took (none where the gateway asks for none). */
async function authenticate(): Promise<{ catalog: Catalog; token: string | undefined }> {
  let token = loadToken();
  let why = '';
  for (;;) {
    const catalog = await fetchCatalog(token);
    if (catalog) {
      saveToken(token);
      return { catalog, token };
    }
    if (token !== undefined) why = 'The gateway refused that credential.';
    saveToken(undefined);
    token = await askToken(why);
  }
}

class Playground implements PaneHost {
  readonly panes = new Map<string, Pane>();
  private readonly editor: Editor;
  private readonly files: FileTree;
  private runtimes: RuntimeInfo[] = [];
  private counter = 0;
  private saveAsked = false;
  /** The session is open (runs wait for it, to know whether they go in its workspace). */
  private opened = false;
  /** The session has a workspace: runs start in it. */
  private workspace = false;

  constructor(
    readonly client: SluiceClient,
    private readonly catalog: Catalog,
    private readonly page: SavedPage,
  ) {
    this.editor = makeEditor(
      ui.editor,
      () => this.runEditor(),
      () => this.editorChanged(),
      (code, position) => this.completeAt(code, position),
    );
    this.files = new FileTree(ui.files, this);
  }

  get session(): string {
    return this.page.session;
  }

  // -------------------------------------------------------------------------------------
  // Start-up
  // -------------------------------------------------------------------------------------

  async start(): Promise<void> {
    this.runtimes = this.catalog.runtimes;
    for (const runtime of this.runtimes) {
      const option = document.createElement('option');
      option.value = runtime.language;
      option.textContent = runtime.version ? `${runtime.language} (${runtime.version})` : runtime.language;
      ui.language.append(option);
    }
    const preferred = [this.page.language, 'python', 'python3', 'bash', 'sh'].find((l) => this.runtimes.some((r) => r.language === l));
    if (preferred) ui.language.value = preferred;
    const limits = this.catalog.limits;
    const timeout = limits['timeout_ms'];
    const output = limits['output_bytes'];
    if (timeout) {
      ui.timeout.value = String(Math.max(1, Math.round(timeout.default / 1000)));
      ui.timeout.max = String(Math.floor(timeout.max / 1000));
    }
    if (output) {
      ui.output.value = String(Math.max(1, Math.round(output.default / MiB)));
      ui.output.max = String(Math.floor(output.max / MiB));
    }
    ui.language.disabled = this.runtimes.length === 0;
    ui.language.addEventListener('change', () => this.languageChanged());
    ui.run.addEventListener('click', () => this.runEditor());
    ui.shell.addEventListener('click', () => this.openShell());
    ui.restart.addEventListener('click', () => this.restartInterpreter());
    // A cell has no terminal: the two ways of running exclude each other.
    ui.keep.addEventListener('change', () => {
      if (ui.keep.checked) ui.tty.checked = false;
    });
    ui.tty.addEventListener('change', () => {
      if (ui.tty.checked) ui.keep.checked = false;
    });
    // Ctrl-Enter runs from anywhere but an input line or a terminal (the editor has its own key).
    document.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter' || !(event.ctrlKey || event.metaKey) || event.defaultPrevented) return;
      const target = event.target as HTMLElement | null;
      if (target?.closest('input, textarea, .term, .cm-editor, dialog')) return;
      event.preventDefault();
      this.runEditor();
    });
    this.languageChanged();
    addEventListener('pagehide', () => this.save());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'hidden') this.save();
    });
    this.restore();
    await this.openSession();
    this.editor.view.focus();
  }

  private runtime(): RuntimeInfo | undefined {
    return this.runtimes.find((r) => r.language === ui.language.value);
  }

  private languageChanged(): void {
    const runtime = this.runtime();
    ui.run.disabled = !runtime;
    ui.tty.disabled = !runtime?.tty;
    if (!runtime?.tty) ui.tty.checked = false;
    ui.tty.parentElement!.title = runtime?.tty
      ? 'Run the editor’s code on a terminal'
      : 'This gateway cannot run this language on a terminal';
    ui.keep.disabled = !runtime?.persistent;
    if (!runtime?.persistent) ui.keep.checked = false;
    ui.restart.disabled = !this.runtimes.some((r) => r.persistent);
    const shell = this.shellRuntime();
    ui.shell.disabled = !shell;
    ui.shell.title = shell ? `An interactive ${shell.language} on a terminal, in this tab’s session` : 'This gateway has no terminal mode';
    if (!runtime) return;
    this.page.language = runtime.language;
    const saved = this.page.code?.[runtime.language];
    this.editor.setExtension(runtime.extension);
    this.editor.setText(saved ?? SAMPLES[runtime.extension] ?? '');
    this.scheduleSave();
  }

  private editorChanged(): void {
    const runtime = this.runtime();
    if (!runtime) return;
    this.page.code = { ...this.page.code, [runtime.language]: this.editor.text() };
    this.scheduleSave();
  }

  private shellRuntime(): RuntimeInfo | undefined {
    return ['bash', 'sh'].map((l) => this.runtimes.find((r) => r.language === l && r.tty)).find((r) => r !== undefined);
  }

  // -------------------------------------------------------------------------------------
  // Runs
  // -------------------------------------------------------------------------------------

  /** The limits the bar asks for, in the protocol's units. */
  private limits(terminal: boolean): Record<string, number> {
    const limits: Record<string, number> = {};
    const timeout = Number(ui.timeout.value);
    const output = Number(ui.output.value);
    const timeoutMax = this.catalog.limits['timeout_ms']?.max;
    // A terminal is for people: it gets the longest wall-clock time the gateway allows.
    if (terminal && timeoutMax !== undefined) limits['timeout_ms'] = timeoutMax;
    else if (Number.isFinite(timeout) && timeout > 0) limits['timeout_ms'] = Math.round(timeout * 1000);
    if (Number.isFinite(output) && output > 0) limits['output_bytes'] = Math.round(output * MiB);
    return limits;
  }

  private runEditor(): void {
    const runtime = this.runtime();
    if (!runtime || !this.opened) return;
    const code = this.editor.text();
    if (ui.tty.checked && runtime.tty) {
      this.openTerminal(runtime.language, code, `${runtime.language} #${++this.counter} (terminal)`);
      return;
    }
    const request: SavedRequest = { code, language: runtime.language, limits: this.limits(false) };
    if (this.workspace) request.workspace = true;
    if (ui.keep.checked && runtime.persistent) request.persistent = true;
    const firstLine = code.split('\n').find((l) => l.trim() !== '') ?? '';
    const title = `${runtime.language} #${++this.counter} ${firstLine.trim().slice(0, 40)}`;
    let execution: ReturnType<SluiceClient['execute']>;
    try {
      execution = this.client.execute(code, { ...request, session: this.session });
    } catch (err) {
      ui.notice.textContent = `not run: ${(err as Error).message}`;
      return;
    }
    const pane = new RunPane(this, execution.id, title, request);
    this.add(pane);
    pane.follow(execution);
    this.changed();
  }

  /** Names the tab's interpreter offers at `position`, while "keep state" is on. */
  private async completeAt(code: string, position: number): Promise<{ from: number; to: number; names: string[] } | null> {
    if (!ui.keep.checked || !this.runtime()?.persistent || !this.opened) return null;
    try {
      const found = await this.client.complete(this.session, code, position);
      return { from: found.cursorStart, to: found.cursorEnd, names: found.matches };
    } catch {
      // No interpreter yet, or a cell runs (`no_kernel`, `kernel_busy`): nothing to offer.
      return null;
    }
  }

  /** Restarts the tab's interpreter: its variables are gone; the workspace stays. */
  private restartInterpreter(): void {
    if (!this.opened) return;
    ui.notice.textContent = '';
    this.client.restart(this.session).then(
      () => {
        ui.notice.textContent = 'the interpreter was restarted: the next run that keeps state starts a fresh one';
      },
      (err: Error) => {
        ui.notice.textContent = `not restarted: ${err.message}`;
      },
    );
  }

  private openShell(): void {
    const shell = this.shellRuntime();
    if (!shell || !this.opened) return;
    this.openTerminal(shell.language, `exec ${shell.language} -i\n`, `${shell.language} shell #${++this.counter}`);
  }

  private openTerminal(language: string, code: string, title: string): void {
    const id = `term-${crypto.randomUUID()}`;
    const request: SavedRequest = { code, language, limits: this.limits(true), tty: true };
    if (this.workspace) request.workspace = true;
    const pane = new TerminalPane(this, id, title, request);
    this.add(pane);
    const { cols, rows } = pane.size();
    request.cols = cols;
    request.rows = rows;
    const options: ExecuteOptions = { ...request, id, session: this.session };
    try {
      pane.follow(this.client.execute(code, options));
    } catch (err) {
      pane.lost(`not run: ${(err as Error).message}`);
    }
    pane.focus();
    this.changed();
  }

  private add(pane: Pane): void {
    this.panes.set(pane.id, pane);
    ui.empty.hidden = true;
    ui.runs.append(pane.root);
    pane.mounted();
    pane.root.scrollIntoView({ block: 'nearest', inline: 'end' });
  }

  // -------------------------------------------------------------------------------------
  // What panes ask for
  // -------------------------------------------------------------------------------------

  seen(event: SluiceEvent): void {
    if (event.session !== this.session) return;
    const last = event.type === 'gap' ? event.resume_from - 1 : event.sequence;
    if (last > this.page.lastSequence) this.page.lastSequence = last;
  }

  changed(): void {
    this.scheduleSave();
  }

  removed(pane: Pane): void {
    this.panes.delete(pane.id);
    ui.empty.hidden = this.panes.size > 0;
    this.changed();
  }

  updateDisplay(displayId: string, bundle: Rich['bundle'], metadata: Rich['metadata']): void {
    let found = 0;
    for (const pane of this.panes.values()) found += pane.updateDisplay(displayId, bundle, metadata);
    if (found > 0) this.changed();
  }

  // -------------------------------------------------------------------------------------
  // Saving and reloading
  // -------------------------------------------------------------------------------------

  private scheduleSave(): void {
    if (this.saveAsked) return;
    this.saveAsked = true;
    setTimeout(() => {
      this.saveAsked = false;
      this.save();
    }, 500);
  }

  save(): void {
    let room = SAVED_IN_ALL;
    // The newest panes keep their output first.
    const panes = [...this.panes.values()].reverse().map((pane) => {
      const saved = pane.save();
      let size = saved.output.reduce((n, p) => n + pieceSize(p), 0);
      while (size > room && saved.output.length > 0) {
        size -= pieceSize(saved.output.shift()!);
        saved.trimmed = true;
      }
      room -= size;
      return saved;
    });
    this.page.panes = panes.reverse();
    savePage(this.page);
  }

  /** Puts the saved panes back (their runs' events come through the session's reader). */
  private restore(): void {
    for (const entry of this.page.panes) {
      const pane =
        entry.kind === 'terminal'
          ? new TerminalPane(this, entry.id, entry.title, entry.request)
          : new RunPane(this, entry.id, entry.title, entry.request);
      this.add(pane);
      pane.restore(entry);
      this.counter += 1;
    }
  }

  /**
   * Attaches to the session with a workspace (creating both if need be), from the last
   * sequence shown, and reads it: runs from before a reload go on in their panes, and the
   * tree follows `files_changed`. A gateway that keeps no workspaces refuses that: the
   * tree goes, and the page attaches as it did before workspaces (only to resume). A
   * session that could not be resumed (it ended while the page was away) takes its runs'
   * panes with it, and the page starts it again.
   */
  private async openSession(): Promise<void> {
    let workspace = true;
    let resuming = this.page.lastSequence > 0 || this.page.panes.some((p) => p.running);
    for (;;) {
      if (!workspace && !resuming) break;
      const since = resuming ? this.page.lastSequence : 0;
      const reader = this.client.attach(this.session, workspace ? { since, workspace } : { since });
      try {
        await reader.ready;
      } catch (err) {
        const code = (err as SluiceError).code;
        if (workspace && (code === 'no_workspace' || code === 'too_many_sessions')) {
          // The workspace is what was refused (the gateway keeps none, or no more): the
          // session goes on without one.
          workspace = false;
          this.files.unavailable(`this gateway keeps no workspace for the session (${(err as Error).message})`);
          continue;
        }
        if (resuming) {
          this.sessionLost(err);
          resuming = false;
          continue;
        }
        // A gateway older than workspaces does not open a session on `attach`: the page
        // goes on without the tree, and its first run opens the session.
        workspace = false;
        this.files.unavailable(`the session's workspace could not be opened (${(err as Error).message})`);
        continue;
      }
      this.workspace = workspace;
      if (workspace) this.files.open();
      void this.read(reader);
      break;
    }
    this.opened = true;
  }

  private async read(reader: AsyncIterable<SluiceEvent>): Promise<void> {
    let fellBehind = false;
    try {
      for await (const event of reader) {
        if (event.type === 'files_changed') this.files.changed(event);
        else if (event.type === 'error' && event.code === 'slow_consumer') fellBehind = true;
        this.fromReader(event);
      }
    } catch (err) {
      this.sessionLost(err);
      return;
    }
    // A burst of output outran the page: it reads on from the last event it showed (the
    // client sends what is still buffered; the rest comes as a gap), and lists the files again.
    if (fellBehind) {
      void this.read(this.client.attach(this.session, { since: this.page.lastSequence }));
      this.files.refresh();
    }
  }

  /** The session ended while the page was away (or the attach was refused): what its runs printed since is gone. */
  private sessionLost(err: unknown): void {
    for (const pane of this.panes.values()) {
      if (pane.source === 'reader') pane.lost(`the session could not be resumed: ${(err as Error).message}`);
    }
    this.page.lastSequence = 0;
    this.changed();
  }

  /** An event of the session after a reload: to the pane of a run from before it. */
  private fromReader(event: SluiceEvent): void {
    this.seen(event);
    if (event.type === 'gap') {
      for (const pane of this.panes.values()) if (pane.source === 'reader' && pane.running) pane.receive(event);
      return;
    }
    if (event.id === null) return;
    let pane = this.panes.get(event.id);
    if (!pane && event.type === 'started') {
      // A run that began while the page was away, before its pane was saved.
      pane = new RunPane(this, event.id, `run ${event.id}`, { code: '', language: '' });
      pane.source = 'reader';
      this.add(pane);
    }
    if (pane?.source === 'reader') pane.receive(event);
  }
}

async function main(): Promise<void> {
  const page = loadPage();
  let auth: { catalog: Catalog; token: string | undefined };
  try {
    auth = await authenticate();
  } catch (err) {
    setStatus('failed', (err as Error).message);
    return;
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let client: SluiceClient;
  let reconnects = 0;
  try {
    client = await SluiceClient.connect(`${scheme}//${location.host}/v1/ws`, {
      ...(auth.token === undefined ? {} : { token: auth.token }),
      // Refusals that belong to no run's stream (`stdin_full`, say): shown in the bar.
      onSocketError: (error) => {
        ui.notice.textContent = error.message;
        ui.notice.title = error.message;
      },
      onConnectionChange: (state, reason) => {
        if (state === 'connected') {
          reconnects += 1;
          ui.status.dataset['reconnects'] = String(reconnects);
          ui.status.title = `reconnected ${reconnects} time${reconnects === 1 ? '' : 's'}; the runs resumed where they were`;
          setStatus('connected', 'connected');
        } else if (state === 'reconnecting') setStatus('reconnecting', 'reconnecting…');
        else setStatus('closed', `disconnected${reason ? `: ${reason}` : ''} (reload the page to connect again)`);
      },
    });
  } catch (err) {
    setStatus('failed', (err as Error).message);
    return;
  }
  setStatus('connected', 'connected');
  const playground = new Playground(client, auth.catalog, page);
  await playground.start();
  document.body.dataset['ready'] = 'true';
}

void main();
