/**
 * The session's workspace beside the editor: a tree of its files, each directory listed
 * when it is opened (and listed again when the session says its files changed), with
 * uploads (a file picker, or files dropped on the panel or on a folder; large files are
 * read and sent a MiB at a time), downloads (the bytes in a Blob, saved through a link)
 * and deletes (after a confirm). Sizes show beside the names.
 *
 * Keyboard: the tree is one tab stop; Up and Down move, Right opens a folder (or goes
 * into it), Left closes it (or goes to its parent), Enter downloads a file or opens a
 * folder, Delete deletes, Home and End jump. Rows keep one height, and a listing replaces
 * a folder's rows only once it has arrived, so nothing jumps while the tree refreshes.
 */

import type { FileEntry, FilesChangedEvent, SluiceClient } from '../../clients/typescript/src/index.js';
import { bytes } from './panes.js';

/** How much of a file an upload reads and sends at once (the client splits it into frames). */
export const UPLOAD_SLICE = 1 << 20;

/** What the tree asks of the page. */
export interface FilesHost {
  readonly client: SluiceClient;
  readonly session: string;
}

/** One directory of the tree: open or not, and its rows' container. */
interface Folder {
  path: string;
  open: boolean;
  /** Where its entries are drawn (the workspace's own for the root). */
  group: HTMLElement;
  /** Its row (none for the root). */
  row: HTMLElement | undefined;
  /** Listed at least once since it was opened. */
  listed: boolean;
}

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function join(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? '' : path.slice(0, slash);
}

/** What went wrong, plainly: the gateway's code and words for a refusal, else the error's message. */
function message(err: unknown): string {
  const event = (err as { event?: { code?: string; data?: string } }).event;
  if (event?.code) return `${event.code}: ${event.data || 'refused'}`;
  return err instanceof Error ? err.message : String(err);
}

/** The file panel; see the module comment. */
export class FileTree {
  private readonly tree: HTMLElement;
  private readonly status: HTMLElement;
  private readonly input: HTMLInputElement;
  private readonly empty: HTMLElement;
  private readonly folders = new Map<string, Folder>();
  /** The row that holds the tab stop (its path), and so the folder uploads go to. */
  private current: string | undefined;
  private refreshing = false;
  private refreshAgain = false;
  /** The last download's object URL, let go at the next one. */
  private lastUrl: string | undefined;
  private active = false;

  constructor(
    private readonly panel: HTMLElement,
    private readonly host: FilesHost,
  ) {
    this.tree = panel.querySelector<HTMLElement>('#files-tree')!;
    this.status = panel.querySelector<HTMLElement>('#files-status')!;
    this.input = panel.querySelector<HTMLInputElement>('#upload-input')!;
    this.empty = panel.querySelector<HTMLElement>('#files-empty')!;
    const upload = panel.querySelector<HTMLButtonElement>('#upload')!;
    const refresh = panel.querySelector<HTMLButtonElement>('#files-refresh')!;
    this.folders.set('', { path: '', open: true, group: this.tree, row: undefined, listed: false });
    upload.addEventListener('click', () => this.input.click());
    this.input.addEventListener('change', () => {
      const files = [...(this.input.files ?? [])];
      this.input.value = '';
      void this.upload(files, this.targetFolder());
    });
    refresh.addEventListener('click', () => this.refresh());
    this.tree.addEventListener('keydown', (event) => this.key(event));
    this.tree.addEventListener('focusin', (event) => {
      const row = (event.target as HTMLElement).closest<HTMLElement>('.node');
      if (row) this.focusRow(row, false);
    });
    // Files dropped on a folder's row go into it; anywhere else on the panel, into the workspace.
    panel.addEventListener('dragover', (event) => {
      if (!this.active || !event.dataTransfer?.types.includes('Files')) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
      panel.classList.add('dropping');
      const row = (event.target as HTMLElement).closest<HTMLElement>('.node[data-kind="dir"]');
      for (const marked of this.tree.querySelectorAll('.drop-target')) if (marked !== row) marked.classList.remove('drop-target');
      row?.classList.add('drop-target');
    });
    panel.addEventListener('dragleave', (event) => {
      if (event.relatedTarget instanceof Node && panel.contains(event.relatedTarget)) return;
      this.clearDrop();
    });
    panel.addEventListener('drop', (event) => {
      if (!this.active) return;
      event.preventDefault();
      this.clearDrop();
      const row = (event.target as HTMLElement).closest<HTMLElement>('.node[data-kind="dir"]');
      void this.upload([...(event.dataTransfer?.files ?? [])], row?.dataset['path'] ?? '');
    });
  }

  /** The session has a workspace: list it. */
  open(): void {
    this.active = true;
    this.panel.dataset['state'] = 'open';
    this.say('');
    this.refresh();
  }

  /** The gateway keeps no workspace for this session: the panel goes. */
  unavailable(why: string): void {
    this.active = false;
    this.panel.hidden = true;
    this.panel.dataset['state'] = 'unavailable';
    this.panel.title = why;
  }

  /** The session said its files changed: the open folders are listed again. */
  changed(_event: FilesChangedEvent): void {
    if (this.active) this.refresh();
  }

  /** Lists every open folder again (once more after the current pass, if asked during it). */
  refresh(): void {
    if (!this.active) return;
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = true;
    void (async () => {
      try {
        do {
          this.refreshAgain = false;
          await this.listOpen('');
        } while (this.refreshAgain);
      } finally {
        this.refreshing = false;
        this.panel.dataset['listed'] = String(Number(this.panel.dataset['listed'] ?? '0') + 1);
      }
    })();
  }

  /** Lists `path` and, below it, every folder still open. */
  private async listOpen(path: string): Promise<void> {
    const folder = this.folders.get(path);
    if (!folder?.open) return;
    let entries: FileEntry[] & { truncated: boolean };
    try {
      entries = await this.host.client.listFiles(this.host.session, path);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'not_found' && path !== '') {
        // The folder went away meanwhile: its parent's listing drops it.
        this.forget(path);
        return;
      }
      this.say(`could not list ${path || 'the workspace'}: ${message(err)}`, true);
      return;
    }
    this.draw(folder, entries);
    for (const entry of entries) {
      if (entry.kind === 'dir' && this.folders.get(join(path, entry.name))?.open) await this.listOpen(join(path, entry.name));
    }
  }

  /** Replaces a folder's rows with `entries`, keeping open folders open and the focus where it was. */
  private draw(folder: Folder, entries: FileEntry[] & { truncated: boolean }): void {
    const hadFocus = this.tree.contains(document.activeElement);
    const level = folder.path === '' ? 1 : folder.path.split('/').length + 1;
    const rows: HTMLElement[] = [];
    const seen = new Set<string>();
    for (const entry of entries) {
      const path = join(folder.path, entry.name);
      seen.add(path);
      const row = this.row(entry, path, level);
      rows.push(row);
      if (entry.kind === 'dir') {
        const known = this.folders.get(path);
        const group = known?.group ?? element('div', 'group');
        group.setAttribute('role', 'group');
        group.hidden = !known?.open;
        this.folders.set(path, { path, open: known?.open ?? false, group, row, listed: known?.listed ?? false });
        row.setAttribute('aria-expanded', String(known?.open ?? false));
        rows.push(group);
      }
    }
    if (entries.truncated) rows.push(element('div', 'more', 'more entries than one listing holds: not all are shown'));
    for (const path of [...this.folders.keys()]) {
      if (path !== folder.path && parentOf(path) === folder.path && !seen.has(path)) this.forget(path);
    }
    folder.group.replaceChildren(...rows);
    folder.listed = true;
    if (folder.path === '') this.empty.hidden = entries.length > 0;
    // The tab stop stays on the row it was on (drawn anew), or moves to the first one;
    // the focus follows it if it was in the tree and went with the old rows.
    const again = this.current === undefined ? undefined : this.rowOf(this.current);
    const target = again ?? this.tree.querySelector<HTMLElement>('.node');
    const lost = hadFocus && !this.tree.contains(document.activeElement);
    if (target) this.focusRow(target, lost);
    else {
      this.current = undefined;
      this.tree.tabIndex = 0;
      if (lost) this.tree.focus();
    }
  }

  private row(entry: FileEntry, path: string, level: number): HTMLElement {
    const row = element('div', 'node');
    row.setAttribute('role', 'treeitem');
    row.setAttribute('aria-level', String(level));
    row.tabIndex = -1;
    row.dataset['path'] = path;
    row.dataset['kind'] = entry.kind;
    row.style.setProperty('--level', String(level - 1));
    const twisty = element('span', 'twisty', entry.kind === 'dir' ? '▸' : '');
    const name = element('span', 'name', entry.kind === 'symlink' ? `${entry.name} →` : entry.name);
    name.title = path;
    const size = element('span', 'size', entry.kind === 'file' ? bytes(entry.size) : '');
    size.title = `${entry.size} bytes`;
    row.append(twisty, name, size);
    if (entry.kind === 'file') {
      const download = element('button', 'download', '↓');
      download.type = 'button';
      download.tabIndex = -1;
      download.title = `Download ${path} (Enter)`;
      download.setAttribute('aria-label', `Download ${path}`);
      download.addEventListener('click', (event) => {
        event.stopPropagation();
        void this.download(path);
      });
      row.append(download);
    } else {
      row.append(element('span', 'download'));
    }
    const remove = element('button', 'delete', '×');
    remove.type = 'button';
    remove.tabIndex = -1;
    remove.title = `Delete ${path} (Delete)`;
    remove.setAttribute('aria-label', `Delete ${path}`);
    remove.addEventListener('click', (event) => {
      event.stopPropagation();
      void this.remove(path, entry.kind);
    });
    row.append(remove);
    row.addEventListener('click', () => {
      this.focusRow(row, true);
      if (entry.kind === 'dir') this.toggle(path);
    });
    return row;
  }

  private forget(path: string): void {
    for (const known of [...this.folders.keys()]) {
      if (known === path || known.startsWith(`${path}/`)) this.folders.delete(known);
    }
  }

  private rowOf(path: string): HTMLElement | undefined {
    return [...this.tree.querySelectorAll<HTMLElement>('.node')].find((row) => row.dataset['path'] === path);
  }

  /** Gives `row` the tab stop (and the focus, with `focus`). */
  private focusRow(row: HTMLElement, focus: boolean): void {
    for (const other of this.tree.querySelectorAll<HTMLElement>('.node[tabindex="0"]')) if (other !== row) other.tabIndex = -1;
    row.tabIndex = 0;
    this.tree.tabIndex = -1;
    this.current = row.dataset['path'];
    if (focus) row.focus();
  }

  /** The folder uploads from the picker go to: the current row's (a folder, or a file's folder). */
  private targetFolder(): string {
    if (this.current === undefined) return '';
    const row = this.rowOf(this.current);
    if (!row) return '';
    return row.dataset['kind'] === 'dir' ? this.current : parentOf(this.current);
  }

  private toggle(path: string, open?: boolean): void {
    const folder = this.folders.get(path);
    if (!folder?.row) return;
    folder.open = open ?? !folder.open;
    folder.group.hidden = !folder.open;
    folder.row.setAttribute('aria-expanded', String(folder.open));
    if (folder.open) void this.listOpen(path);
  }

  private visibleRows(): HTMLElement[] {
    return [...this.tree.querySelectorAll<HTMLElement>('.node')].filter((row) => row.offsetParent !== null);
  }

  private key(event: KeyboardEvent): void {
    const row = (event.target as HTMLElement).closest<HTMLElement>('.node');
    const rows = this.visibleRows();
    if (!row) {
      if (rows[0] && ['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(event.key)) {
        event.preventDefault();
        this.focusRow(rows[0], true);
      }
      return;
    }
    const path = row.dataset['path']!;
    const dir = row.dataset['kind'] === 'dir';
    const open = this.folders.get(path)?.open === true;
    const at = rows.indexOf(row);
    const go = (target: HTMLElement | undefined): void => {
      if (target) this.focusRow(target, true);
    };
    switch (event.key) {
      case 'ArrowDown':
        go(rows[at + 1]);
        break;
      case 'ArrowUp':
        go(rows[at - 1]);
        break;
      case 'Home':
        go(rows[0]);
        break;
      case 'End':
        go(rows[rows.length - 1]);
        break;
      case 'ArrowRight':
        if (dir && !open) this.toggle(path, true);
        else if (dir) go(rows[at + 1]);
        break;
      case 'ArrowLeft':
        if (dir && open) this.toggle(path, false);
        else if (path.includes('/')) go(this.rowOf(parentOf(path)));
        break;
      case 'Enter':
      case ' ':
        if (dir) this.toggle(path);
        else void this.download(path);
        break;
      case 'Delete':
      case 'Backspace':
        void this.remove(path, row.dataset['kind'] ?? 'file');
        break;
      default:
        return;
    }
    event.preventDefault();
  }

  private clearDrop(): void {
    this.panel.classList.remove('dropping');
    for (const marked of this.tree.querySelectorAll('.drop-target')) marked.classList.remove('drop-target');
  }

  /** A line under the tree: what is going on, or what went wrong (in red, kept until the next line). */
  private say(text: string, error = false): void {
    this.status.textContent = text;
    this.status.title = text;
    this.status.classList.toggle('error', error);
  }

  /** Sends `files` into `folder`, one after the other, each a slice at a time. */
  async upload(files: File[], folder: string): Promise<void> {
    for (const file of files) {
      const path = join(folder, file.name);
      try {
        let sent = 0;
        do {
          const slice = new Uint8Array(await file.slice(sent, sent + UPLOAD_SLICE).arrayBuffer());
          if (file.size > UPLOAD_SLICE) this.say(`uploading ${path}: ${bytes(sent)} of ${bytes(file.size)}`);
          await this.host.client.writeFile(this.host.session, path, slice, { append: sent > 0 });
          sent += slice.length;
        } while (sent < file.size);
        this.say(`uploaded ${path} (${bytes(file.size)})`);
      } catch (err) {
        this.say(`could not upload ${path}: ${message(err)}`, true);
        return;
      }
    }
    // The gateway's files_changed refreshes the tree too; this one does not wait for it.
    if (folder !== '') this.toggle(folder, true);
    this.refresh();
  }

  /** Reads `path` and saves it through a link to a Blob. */
  async download(path: string): Promise<void> {
    try {
      this.say(`downloading ${path}…`);
      const data = await this.host.client.readFile(this.host.session, path);
      if (this.lastUrl) URL.revokeObjectURL(this.lastUrl);
      this.lastUrl = URL.createObjectURL(new Blob([data as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
      const link = element('a');
      link.href = this.lastUrl;
      link.download = path.slice(path.lastIndexOf('/') + 1);
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      this.say(`downloaded ${path} (${bytes(data.length)})`);
    } catch (err) {
      this.say(`could not download ${path}: ${message(err)}`, true);
    }
  }

  /** Deletes `path` (a folder with everything in it) once the user confirms. */
  async remove(path: string, kind: string): Promise<void> {
    const what = kind === 'dir' ? `the folder ${path} and everything in it` : path;
    if (!confirm(`Delete ${what}?`)) return;
    const rows = this.visibleRows();
    const at = rows.findIndex((row) => row.dataset['path'] === path);
    try {
      await this.host.client.deleteFile(this.host.session, path, { recursive: kind === 'dir' });
      this.say(`deleted ${path}`);
      // The tab stop moves to a neighbour of the row that went.
      const next = rows[at + 1] ?? rows[at - 1];
      if (next) this.current = next.dataset['path'];
      this.refresh();
    } catch (err) {
      this.say(`could not delete ${path}: ${message(err)}`, true);
    }
  }
}
