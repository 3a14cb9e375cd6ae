/**
 * The page of the browser test: bundled with the browser entry point (native WebSocket,
 * no `ws`), it runs a program fed through stdin, then one that the user cancels with a
 * button, and renders what happened. With `?token=`, it presents that credential (in the
 * subprotocol list, the only way a browser can).
 */

import { SluiceClient, SluiceError } from '../../src/index.js';

const el = (id: string): HTMLElement => {
  const found = document.getElementById(id);
  if (!found) throw new Error(`no #${id}`);
  return found;
};

async function main(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const url = params.get('gateway');
  if (!url) throw new Error('no ?gateway= in the address');
  const token = params.get('token');
  const client = await SluiceClient.connect(url, token === null ? {} : { token });
  el('status').dataset['state'] = 'connected';

  const greet = client.execute('read name; echo "hello, $name"', { language: 'sh' });
  greet.sendStdin('browser\n');
  greet.closeStdin();
  for await (const event of greet) {
    if (event.type === 'stdout') el('out').textContent += event.data;
  }
  el('exit').textContent = String((await greet.done).exitCode);

  const long = client.execute('echo waiting; sleep 60', { language: 'sh' });
  el('cancel').addEventListener('click', () => long.cancel());
  for await (const event of long) {
    if (event.type === 'stdout') el('long').textContent += event.data;
  }
  el('outcome').textContent = (await long.done).status;
  client.close();
  el('status').dataset['state'] = 'done';
}

main().catch((err: unknown) => {
  el('error').textContent = err instanceof SluiceError ? `${err.code}: ${err.message}` : String(err);
  el('status').dataset['state'] = 'failed';
});
