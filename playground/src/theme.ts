/** The editor's colours, matching the page's dark palette (style.css). */

import { HighlightStyle } from '@codemirror/language';
import { EditorView } from '@codemirror/view';
import { tags as t } from '@lezer/highlight';

export const darkTheme = EditorView.theme(
  {
    '&': { color: '#d8dce4', backgroundColor: '#16181d', height: '100%' },
    '.cm-content': { caretColor: '#5aa9ff', fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace', fontSize: '13px' },
    '.cm-cursor, .cm-dropCursor': { borderLeftColor: '#5aa9ff' },
    '&.cm-focused .cm-selectionBackground, .cm-selectionBackground, .cm-content ::selection': { backgroundColor: '#264f78' },
    '.cm-gutters': { backgroundColor: '#1e2128', color: '#6b7383', border: 'none' },
    '.cm-activeLine': { backgroundColor: '#ffffff08' },
    '.cm-activeLineGutter': { backgroundColor: '#ffffff10' },
    '&.cm-focused .cm-matchingBracket': { backgroundColor: '#3b4252', outline: '1px solid #5aa9ff55' },
    '.cm-scroller': { overflow: 'auto' },
  },
  { dark: true },
);

export const darkHighlight = HighlightStyle.define([
  { tag: [t.keyword, t.controlKeyword, t.moduleKeyword, t.operatorKeyword], color: '#ff7eb6' },
  { tag: [t.string, t.special(t.string), t.regexp], color: '#a5d6ff' },
  { tag: [t.number, t.bool, t.null, t.atom], color: '#79c0ff' },
  { tag: [t.comment, t.lineComment, t.blockComment], color: '#7d8590', fontStyle: 'italic' },
  { tag: [t.function(t.variableName), t.function(t.propertyName)], color: '#d2a8ff' },
  { tag: [t.definition(t.variableName), t.className, t.typeName], color: '#ffa657' },
  { tag: [t.propertyName, t.attributeName], color: '#7ee787' },
  { tag: [t.variableName, t.special(t.variableName)], color: '#d8dce4' },
  { tag: [t.operator, t.punctuation, t.bracket], color: '#c9d1d9' },
  { tag: t.invalid, color: '#ff7b72' },
]);
