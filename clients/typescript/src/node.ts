/**
 * sluice-client for Node (>= 20), whose global `WebSocket` is missing or experimental:
 * the same API as the browser entry point, with `ws` as the default WebSocket.
 */

import WebSocket from 'ws';
import { useDefaultWebSocket } from './client.js';
import type { WebSocketConstructor } from './connection.js';

useDefaultWebSocket(WebSocket as unknown as WebSocketConstructor);

export * from './index.js';
