/**
 * What the page keeps in this tab's session storage, so that a reload picks up where it
 * was: the session's name and the last sequence of it the page has shown, each pane with
 * the tail of its output and, for a run still going, the exact request that started it
 * (sent again after the reload, it gives the page back control of the run: the gateway
 * recognises the id and starts nothing), and the editor's text. The credential is kept
 * under a key of its own. Nothing goes to local storage: it all ends with the tab.
 */

import type { Piece } from './output.js';

/** The request of a run, as it was sent. */
export interface SavedRequest {
  code: string;
  language: string;
  limits?: Record<string, number>;
  tty?: boolean;
  cols?: number;
  rows?: number;
  /** Run in the session's workspace (sent as it was: the gateway recognises a repeat by its fields). */
  workspace?: boolean;
  /** A cell of the session's persistent interpreter ("keep state"). */
  persistent?: boolean;
}

/** One pane. */
export interface SavedPane {
  id: string;
  kind: 'run' | 'terminal';
  title: string;
  /** Its state's word (`running`, `completed`, ...) and the line under its output. */
  status: string;
  summary: string;
  running: boolean;
  request: SavedRequest;
  output: Piece[];
  trimmed: boolean;
}

/** The whole page. */
export interface SavedPage {
  session: string;
  /** The last sequence of the session whose event the panes below include. */
  lastSequence: number;
  language?: string;
  code?: Record<string, string>;
  panes: SavedPane[];
}

const PAGE_KEY = 'sluice.playground.page';
const TOKEN_KEY = 'sluice.playground.token';

/** At most this much output is saved per pane, and in all (session storage holds a few MiB). */
export const SAVED_PER_PANE = 256 * 1024;
export const SAVED_IN_ALL = 1024 * 1024;

function randomName(): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `playground-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** The saved page, or a new one with a fresh session name. */
export function loadPage(): SavedPage {
  try {
    const text = sessionStorage.getItem(PAGE_KEY);
    if (text) {
      const page = JSON.parse(text) as SavedPage;
      if (typeof page.session === 'string' && typeof page.lastSequence === 'number' && Array.isArray(page.panes)) return page;
    }
  } catch {
    // Unreadable: start afresh.
  }
  return { session: randomName(), lastSequence: 0, panes: [] };
}

/** Saves `page`; without the output if storage is full, and not at all if even that fails. */
export function savePage(page: SavedPage): void {
  try {
    sessionStorage.setItem(PAGE_KEY, JSON.stringify(page));
  } catch {
    try {
      const bare = { ...page, panes: page.panes.map((p) => ({ ...p, output: [], trimmed: true })) };
      sessionStorage.setItem(PAGE_KEY, JSON.stringify(bare));
    } catch {
      // Storage refused: a reload starts afresh.
    }
  }
}

export function loadToken(): string | undefined {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
  } catch {
    return undefined;
  }
}

export function saveToken(token: string | undefined): void {
  try {
    if (token === undefined) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Without storage the token lasts as long as the page.
  }
}
