/**
 * The page of the rendering test (browser-render.test.ts): bundled with the browser entry
 * point, it offers `renderBundle` to the test as `window.sluice`, and records in
 * `window.ran` and `window.messages` what any script of a drawn bundle manages to tell
 * it (a script with the page's origin can call `ran.push`; one in another origin can
 * only post a message).
 */

import { renderBundle } from '../../src/index.js';

const page = window as unknown as { sluice: { renderBundle: typeof renderBundle }; ran: string[]; messages: string[] };
page.sluice = { renderBundle };
page.ran = [];
page.messages = [];
window.addEventListener('message', (event) => page.messages.push(String(event.data)));
document.body.dataset['ready'] = 'true';
