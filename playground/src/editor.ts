/**
 * The code editor: CodeMirror 6 with line numbers, history, bracket matching, search
 * keys and syntax highlighting chosen by the runtime's file extension (Python,
 * JavaScript and TypeScript, shell), Ctrl-Enter (Cmd-Enter) to run, and completions
 * (Ctrl-Space, or as a name is typed) from the page when it has any to offer.
 */

import { autocompletion, type CompletionContext, type CompletionResult } from '@codemirror/autocomplete';
import { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
import { javascript } from '@codemirror/lang-javascript';
import { python } from '@codemirror/lang-python';
import { bracketMatching, defaultHighlightStyle, indentOnInput, StreamLanguage, syntaxHighlighting } from '@codemirror/language';
import { shell } from '@codemirror/legacy-modes/mode/shell';
import { Compartment, EditorState, type Extension, Prec } from '@codemirror/state';
import {
  drawSelection,
  EditorView,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
} from '@codemirror/view';
import { darkHighlight, darkTheme } from './theme.js';

/** The syntax for a runtime's file extension (none for an extension it does not know). */
export function syntaxFor(extension: string): Extension {
  switch (extension) {
    case 'py':
      return python();
    case 'js':
    case 'mjs':
    case 'cjs':
      return javascript();
    case 'ts':
    case 'mts':
      return javascript({ typescript: true });
    case 'sh':
    case 'bash':
      return StreamLanguage.define(shell);
    default:
      return [];
  }
}

export interface Editor {
  view: EditorView;
  text(): string;
  setText(text: string): void;
  setExtension(extension: string): void;
}

/** Completions of the code at a position (JavaScript string indices): what replaces `from` to `to`. */
export type Completer = (code: string, position: number) => Promise<{ from: number; to: number; names: string[] } | null>;

export function makeEditor(parent: HTMLElement, run: () => void, changed: () => void, complete: Completer): Editor {
  const source = async (context: CompletionContext): Promise<CompletionResult | null> => {
    // As a name is typed, or after a dot; Ctrl-Space anywhere.
    if (!context.explicit && !context.matchBefore(/[\w$.]$/)) return null;
    const found = await complete(context.state.doc.toString(), context.pos);
    if (!found || found.names.length === 0 || context.aborted) return null;
    return { from: found.from, to: found.to, options: found.names.map((label) => ({ label })), validFor: /^[\w$]*$/ };
  };
  const syntax = new Compartment();
  const runKeys = Prec.highest(
    keymap.of([
      {
        key: 'Mod-Enter',
        run: () => {
          run();
          return true;
        },
      },
    ]),
  );
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: '',
      extensions: [
        runKeys,
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightSpecialChars(),
        history(),
        drawSelection(),
        indentOnInput(),
        bracketMatching(),
        highlightActiveLine(),
        keymap.of([...defaultKeymap, ...historyKeymap, indentWithTab]),
        darkTheme,
        syntaxHighlighting(darkHighlight),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        syntax.of([]),
        autocompletion({ override: [source] }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) changed();
        }),
      ],
    }),
  });
  return {
    view,
    text: () => view.state.doc.toString(),
    setText: (text) => view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } }),
    setExtension: (extension) => view.dispatch({ effects: syntax.reconfigure(syntaxFor(extension)) }),
  };
}
