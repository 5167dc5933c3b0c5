/**
 * llm-proxy-client.js: a small browser client for flask-llm-proxy (an ES module, no dependencies).
 *
 * The proxy serves this file at `<prefix>/static/llm-proxy-client.js` (prefix default `/api`).
 *
 *     import { LLMProxyClient } from '/api/static/llm-proxy-client.js';
 *
 *     const client = new LLMProxyClient({
 *       baseUrl: 'https://backend.example.com/api',   // the proxy prefix, without the provider
 *       provider: 'anthropic',                         // POST <baseUrl>/<provider>
 *       getToken: async () => myJwt,                   // optional: sent as "Authorization: Bearer <JWT>"
 *     });
 *     for await (const chunk of client.stream({
 *       model: 'claude-3-5-sonnet-20241022',
 *       messages: [{ role: 'user', content: 'Hello' }],
 *       max_new_tokens: 200,
 *     })) {
 *       output.textContent += chunk.token;
 *     }
 *
 * new LLMProxyClient(options)
 *   baseUrl        the proxy prefix URL, e.g. "/api" or "https://host/api" (required)
 *   provider       the provider name configured on the proxy (required; per call: `{provider}` in
 *                  the second argument of stream/complete)
 *   getToken       optional `() => string | null | Promise<string | null>`, called before every
 *                  attempt (so a refreshed token is picked up); a token adds `Authorization: Bearer`
 *   headers        optional extra request headers (object); the proxy's CORS setup must allow them
 *   timeoutMs      60000: the longest wait for the response headers and, once the stream started,
 *                  the longest silence between two chunks (keep-alive comments count as chunks)
 *   maxRetries     2: retries after the first attempt (3 attempts in all, as in the design's
 *                  "Retry Strategy")
 *   retryDelaysMs  [1000, 2000]: the wait before retry 1, 2, ... (the last value repeats)
 *   fetch          optional fetch implementation (default: globalThis.fetch)
 *
 * client.stream(body, {signal, provider}?)  -> async iterator of chunks
 *   `body` is the proxy's neutral request (CONTRACT.md): {model, messages, max_tokens or
 *   max_new_tokens, temperature, tools, ...}; `stream: true` is forced. Each chunk is the
 *   proxy's event object with these fields always present:
 *     {token: string, tokenId: number, isFirst: boolean, isLast: boolean}
 *   and, when the proxy sent them: ttfbMs (first chunk), finishReason and usage
 *   ({inputTokens, outputTokens, costUsd?, reasoningTokens?}, on the isLast chunk), toolCall
 *   ({id, name, arguments}), and with `include_reasoning: true` in the body: reasoning (a piece of
 *   the model's thinking, on a chunk whose token is ''), reasoningSignature / redactedReasoning
 *   (the end of an Anthropic thinking block, to send back with tool results).
 *   The iterator ends after `data: [DONE]`. Leaving the loop early (break, or `signal`) aborts
 *   the request, so the proxy stops the upstream call.
 *
 * client.complete(body, {signal, provider}?)  -> Promise of the JSON answer for `stream: false`:
 *   {content, finishReason, usage: {promptTokens, completionTokens, totalTokens}, toolCalls?}
 *   (with include_reasoning: also reasoning, and reasoningBlocks for Anthropic's thinking blocks)
 *
 * client.models({signal}?)  -> Promise of GET <baseUrl>/models:
 *   {providers: {name: {type, models: [names or fnmatch patterns], endpoint}}}
 *
 * Errors (all extend LLMProxyError, which has `retryable` and `attempts`):
 *   ProxyHTTPError     the proxy answered with an HTTP error before the stream: status, type,
 *                      code, message (the proxy's "error" text), retryAfter (seconds, from the
 *                      Retry-After header or the body's retryAfter; null when absent), body
 *   ProxyStreamError   the stream failed after it started: the proxy's `error:` line (statusCode,
 *                      code, message), a stream cut without `[DONE]` (code "STREAM_INCOMPLETE"),
 *                      or an event that is not JSON (code "MALFORMED_EVENT")
 *   ProxyNetworkError  the request did not reach the proxy or the connection broke. A browser
 *                      reports a CORS refusal the same way (a TypeError from fetch), so the
 *                      message names both causes.
 *   ProxyTimeoutError  `timeoutMs` passed: `phase` is "headers" or "stream"
 *   A call aborted through `signal` rejects with the signal's reason (an AbortError).
 *
 * Retries: only before anything was received: HTTP status >= 500 and network errors, waiting
 *   retryDelaysMs between attempts. Never retried: 4xx (429 included: its retryAfter is for the
 *   caller to show or honour), a response carrying `x-should-retry: false` (the proxy sets it when
 *   it already retried the upstream itself), timeouts (the request may still be running and
 *   costing tokens), and anything after the first byte of a stream.
 *
 * agentary-js compatibility: the URL (`<baseUrl>/<provider>`) and body are the ones agentary-js's
 *   CloudProvider sends (`model`, `messages`, `max_new_tokens`, `stream`), and the chunks are
 *   the ones it yields, so the same proxy endpoint serves both.
 *
 * SSEParser (exported for reuse and tests): an incremental Server-Sent Events parser over text.
 *   parser.feed(text) -> [{event, data}], parser.end() -> the same for what is left. It accepts
 *   \n, \r\n and \r line ends (a \r\n split across two chunks too), multi-line `data:` (joined
 *   with \n), comments (`: ping`), and chunks split anywhere. The proxy's in-stream `error: {...}`
 *   line comes out at once as {event: "error", data: "{...}"}. Decode bytes with a
 *   TextDecoder in stream mode first (see decodeSSE) so split UTF-8 characters survive.
 */

export class LLMProxyError extends Error {
  constructor(message, { retryable = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'LLMProxyError';
    this.retryable = retryable;
    this.attempts = 1;
  }
}

export class ProxyHTTPError extends LLMProxyError {
  constructor({ status, type = null, code = null, message, retryAfter = null, body = null, retryable = false }) {
    super(message || `HTTP ${status}`, { retryable });
    this.name = 'ProxyHTTPError';
    this.status = status;
    this.statusCode = status;
    this.type = type;
    this.code = code || (type ? String(type).toUpperCase() : null);
    this.retryAfter = retryAfter;
    this.body = body;
  }
}

export class ProxyStreamError extends LLMProxyError {
  constructor({ message, statusCode = 502, code = 'STREAM_ERROR', tokensReceived = 0 }) {
    super(message || 'the stream failed');
    this.name = 'ProxyStreamError';
    this.statusCode = statusCode;
    this.status = statusCode;
    this.code = code;
    this.tokensReceived = tokensReceived;
  }
}

export class ProxyNetworkError extends LLMProxyError {
  constructor(message, { cause, retryable = true } = {}) {
    super(message, { retryable, cause });
    this.name = 'ProxyNetworkError';
  }
}

export class ProxyTimeoutError extends LLMProxyError {
  constructor(message, { phase }) {
    super(message);
    this.name = 'ProxyTimeoutError';
    this.phase = phase;
  }
}

// --- SSE ---------------------------------------------------------------------------------------

const LINE_END = /\r\n|\r|\n/g;

export class SSEParser {
  constructor() {
    this._buf = '';
    this._data = [];
    this._event = '';
    this._skipLF = false; // the previous chunk ended in "\r": a leading "\n" belongs to it
  }

  feed(text) {
    const events = [];
    if (!text) return events;
    let buf = this._buf + text;
    let start = 0;
    if (this._skipLF) {
      this._skipLF = false;
      if (buf[0] === '\n') start = 1;
    }
    LINE_END.lastIndex = start;
    let m;
    while ((m = LINE_END.exec(buf)) !== null) {
      const line = buf.slice(start, m.index);
      start = m.index + m[0].length;
      if (m[0] === '\r' && start === buf.length) this._skipLF = true;
      this._line(line, events);
    }
    this._buf = start ? buf.slice(start) : buf;
    return events;
  }

  /** The input ended: a last line without a line end, and an event without its blank line. */
  end() {
    const events = [];
    if (this._buf) {
      const line = this._buf;
      this._buf = '';
      this._line(line, events);
    }
    this._dispatch(events);
    return events;
  }

  _dispatch(events) {
    if (this._data.length) {
      events.push({ event: this._event || 'message', data: this._data.join('\n') });
    }
    this._data = [];
    this._event = '';
  }

  _line(line, events) {
    if (line === '') {
      this._dispatch(events);
      return;
    }
    if (line[0] === ':') return; // a comment: keep-alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this._data.push(value);
    else if (field === 'event') this._event = value;
    else if (field === 'error') events.push({ event: 'error', data: value }); // the proxy's error line
    // "id", "retry" and unknown fields are ignored
  }
}

/**
 * Read a byte stream (a fetch Response body) as SSE events: an async iterator of {event, data}.
 * UTF-8 is decoded incrementally, so a character split between two chunks is kept whole.
 * `onChunk` is called for every network chunk (the idle timer uses it).
 */
export async function* decodeSSE(body, { onChunk } = {}) {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  const parser = new SSEParser();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (onChunk) onChunk(value);
      for (const ev of parser.feed(decoder.decode(value, { stream: true }))) yield ev;
    }
    finished = true;
    for (const ev of parser.feed(decoder.decode())) yield ev;
    for (const ev of parser.end()) yield ev;
  } finally {
    if (!finished) {
      try { await reader.cancel(); } catch { /* already errored or closed */ }
    }
    try { reader.releaseLock(); } catch { /* a read may still be pending */ }
  }
}

// --- helpers -----------------------------------------------------------------------------------

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) { reject(signal.reason); return; }
    const t = setTimeout(() => { if (signal) signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    function onAbort() { clearTimeout(t); reject(signal.reason); }
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), else null. */
export function parseRetryAfter(value) {
  if (value == null || value === '') return null;
  const s = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.ceil(Number(s));
  const when = Date.parse(s);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

async function httpError(response) {
  let body = null;
  let text = '';
  try {
    text = await response.text();
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const status = response.status;
  const fromHeader = parseRetryAfter(response.headers.get('retry-after'));
  const fromBody = body && typeof body.retryAfter === 'number' ? body.retryAfter : null;
  let message = null;
  if (body && typeof body.error === 'string') message = body.error;
  else if (body && body.error && typeof body.error.message === 'string') message = body.error.message;
  else message = text.trim().slice(0, 200) || `HTTP ${status} ${response.statusText || ''}`.trim();
  const noRetry = (response.headers.get('x-should-retry') || '').toLowerCase() === 'false';
  return new ProxyHTTPError({
    status,
    type: body && typeof body.type === 'string' ? body.type : null,
    code: body && typeof body.code === 'string' ? body.code : null,
    message,
    retryAfter: fromHeader != null ? fromHeader : fromBody,
    body,
    retryable: status >= 500 && !noRetry,
  });
}

function normalizeChunk(obj) {
  return {
    ...obj,
    token: typeof obj.token === 'string' ? obj.token : '',
    tokenId: obj.tokenId,
    isFirst: obj.isFirst === true,
    isLast: obj.isLast === true,
  };
}

function trimSlash(url) {
  return String(url).replace(/\/+$/, '');
}

// --- the client --------------------------------------------------------------------------------

export class LLMProxyClient {
  constructor({
    baseUrl, provider, getToken = null, headers = {}, timeoutMs = 60000,
    maxRetries = 2, retryDelaysMs = [1000, 2000], fetch: fetchImpl = null,
  } = {}) {
    if (!baseUrl) throw new TypeError('LLMProxyClient: baseUrl is required (e.g. "/api")');
    this.baseUrl = trimSlash(baseUrl);
    this.provider = provider || null;
    this.getToken = getToken;
    this.headers = { ...headers };
    this.timeoutMs = timeoutMs;
    this.maxRetries = Math.max(0, maxRetries | 0);
    this.retryDelaysMs = retryDelaysMs && retryDelaysMs.length ? [...retryDelaysMs] : [0];
    this._fetch = fetchImpl || ((...args) => globalThis.fetch(...args));
  }

  /** The endpoint of a provider: `<baseUrl>/<provider>` (agentary-js's proxyUrl). */
  endpoint(provider = this.provider) {
    if (!provider) throw new TypeError('LLMProxyClient: no provider given');
    return `${this.baseUrl}/${encodeURIComponent(provider)}`;
  }

  async _headers(extra) {
    const h = { ...this.headers, ...extra };
    if (this.getToken) {
      const token = await this.getToken();
      if (token) h.Authorization = `Bearer ${token}`;
    }
    return h;
  }

  _delay(retry) {
    const d = this.retryDelaysMs;
    return d[Math.min(retry, d.length - 1)];
  }

  /**
   * One logical request: attempts with retries until a response with an OK status arrives.
   * Returns {response, controller, timer} with the header timeout cleared; the caller owns the
   * controller (abort) from then on.
   */
  async _open(url, init, signal) {
    let lastError = null;
    for (let attempt = 0; attempt <= this.maxRetries; attempt++) {
      if (attempt > 0) await sleep(this._delay(attempt - 1), signal);
      if (signal && signal.aborted) throw signal.reason;
      const headers = await this._headers(init.headers);
      const controller = new AbortController();
      const onAbort = () => controller.abort(signal.reason);
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
      let timedOut = false;
      const timer = setTimeout(() => { timedOut = true; controller.abort(); }, this.timeoutMs);
      let response;
      try {
        response = await this._fetch(url, { ...init, headers, signal: controller.signal });
      } catch (err) {
        clearTimeout(timer);
        if (signal) signal.removeEventListener('abort', onAbort);
        if (signal && signal.aborted) throw signal.reason;
        if (timedOut) {
          const e = new ProxyTimeoutError(`no answer from the proxy within ${this.timeoutMs} ms`, { phase: 'headers' });
          e.attempts = attempt + 1;
          throw e;
        }
        lastError = new ProxyNetworkError(
          `could not reach the proxy at ${url}: the network failed, the proxy is down, or it does not allow ` +
          `requests from this origin (CORS) [${err && err.message ? err.message : err}]`,
          { cause: err },
        );
        lastError.attempts = attempt + 1;
        continue;
      }
      clearTimeout(timer);
      if (response.ok) {
        return { response, controller, detach: () => signal && signal.removeEventListener('abort', onAbort) };
      }
      let err;
      try {
        err = await httpError(response);
      } finally {
        if (signal) signal.removeEventListener('abort', onAbort);
      }
      err.attempts = attempt + 1;
      if (!err.retryable) throw err;
      lastError = err;
    }
    throw lastError;
  }

  /** Stream a chat answer: an async iterator of contract chunks (see the header). */
  async *stream(body, { signal, provider } = {}) {
    const url = this.endpoint(provider);
    const payload = JSON.stringify({ ...body, stream: true });
    const init = {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: payload,
    };
    const { response, controller, detach } = await this._open(url, init, signal);
    let idleTimer = null;
    let idleFired = false;
    const arm = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => { idleFired = true; controller.abort(); }, this.timeoutMs);
    };
    let done = false;
    let count = 0;
    try {
      if (!response.body) {
        throw new ProxyStreamError({ message: 'the response has no body to stream', code: 'STREAM_INCOMPLETE' });
      }
      arm();
      try {
        for await (const ev of decodeSSE(response.body, { onChunk: arm })) {
          if (ev.event === 'error') {
            let info = {};
            try { info = JSON.parse(ev.data) || {}; } catch { info = { message: ev.data }; }
            throw new ProxyStreamError({
              message: info.message || 'the stream failed',
              statusCode: typeof info.statusCode === 'number' ? info.statusCode : 502,
              code: info.code || 'STREAM_ERROR',
              tokensReceived: count,
            });
          }
          if (ev.data === '[DONE]') { done = true; break; }
          let obj;
          try {
            obj = JSON.parse(ev.data);
          } catch {
            throw new ProxyStreamError({ message: 'the proxy sent an event that is not JSON', code: 'MALFORMED_EVENT', tokensReceived: count });
          }
          if (obj && obj.error && obj.token === undefined) { // an error as a data event
            const e = typeof obj.error === 'object' ? obj.error : { message: String(obj.error) };
            throw new ProxyStreamError({
              message: e.message || 'the stream failed', statusCode: e.statusCode || 502,
              code: e.code || e.type || 'STREAM_ERROR', tokensReceived: count,
            });
          }
          count++;
          yield normalizeChunk(obj);
        }
      } catch (err) {
        if (err instanceof LLMProxyError) throw err;
        if (signal && signal.aborted) throw signal.reason;
        if (idleFired) {
          throw new ProxyTimeoutError(`the stream was silent for ${this.timeoutMs} ms`, { phase: 'stream' });
        }
        throw new ProxyNetworkError(`the connection to the proxy broke during the stream [${err && err.message ? err.message : err}]`, { cause: err, retryable: false });
      }
      if (!done) {
        throw new ProxyStreamError({
          message: 'the stream ended without [DONE] or an error line: the connection was cut',
          statusCode: 502, code: 'STREAM_INCOMPLETE', tokensReceived: count,
        });
      }
    } finally {
      clearTimeout(idleTimer);
      detach();
      if (!done) controller.abort(); // left early or failed: stop the request
    }
  }

  /** `stream: false`: resolves to the proxy's JSON answer. */
  async complete(body, { signal, provider } = {}) {
    const url = this.endpoint(provider);
    const init = {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ ...body, stream: false }),
    };
    return this._json(url, init, signal);
  }

  /** GET <baseUrl>/models: the providers and their allowed models (names or patterns). */
  async models({ signal } = {}) {
    return this._json(`${this.baseUrl}/models`, { method: 'GET', headers: { Accept: 'application/json' } }, signal);
  }

  async _json(url, init, signal) {
    const { response, controller, detach } = await this._open(url, init, signal);
    // the body of a non-streamed answer comes in one piece: the timeout covers reading it
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; controller.abort(); }, this.timeoutMs);
    try {
      return await response.json();
    } catch (err) {
      if (signal && signal.aborted) throw signal.reason;
      if (timedOut) throw new ProxyTimeoutError(`no complete answer within ${this.timeoutMs} ms`, { phase: 'body' });
      if (err instanceof SyntaxError) throw new ProxyHTTPError({ status: response.status, type: 'malformed_response', message: 'the proxy answer is not JSON' });
      throw new ProxyNetworkError(`the connection to the proxy broke [${err && err.message ? err.message : err}]`, { cause: err, retryable: false });
    } finally {
      clearTimeout(timer);
      detach();
    }
  }
}

export default LLMProxyClient;
