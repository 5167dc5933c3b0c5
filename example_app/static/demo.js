// The flask-llm-proxy demo page: dev sign-in, model choice, a streamed answer, plain-words errors.
// No framework and no build step; the client module is the one the proxy serves itself.
import {
  LLMProxyClient, ProxyHTTPError, ProxyStreamError, ProxyNetworkError, ProxyTimeoutError,
} from '/api/static/llm-proxy-client.js';

const params = new URLSearchParams(location.search);
const API = (params.get('api') || '/api').replace(/\/+$/, '');
const TOKEN_URL = params.get('token') || '/dev/token';
const STORAGE_KEY = 'llm-proxy-demo:' + API;

const $ = (id) => document.getElementById(id);
const el = {
  apiUrl: $('api-url'), signinForm: $('signin-form'), user: $('user'), signout: $('signout'), whoami: $('whoami'),
  chatForm: $('chat-form'), provider: $('provider'), model: $('model'), modelOptions: $('model-options'),
  modelHint: $('model-hint'), maxTokens: $('max-tokens'), prompt: $('prompt'), system: $('system'), send: $('send'), stop: $('stop'),
  status: $('status'), error: $('error'), output: $('output'), ttfb: $('ttfb'), tokens: $('tokens'),
  usage: $('usage'), cost: $('cost'), image: $('image'), imageClear: $('image-clear'), imageInfo: $('image-info'),
};

let session = loadSession(); // {token, user} or null
let providers = {}; // name (or "profiles/<name>") -> {type, models, endpoint}
let modelsLoad = 0; // sequence number: only the latest load may fill the form
let running = null; // the AbortController of the request in flight

function loadSession() {
  try { return JSON.parse(sessionStorage.getItem(STORAGE_KEY)) || null; } catch { return null; }
}

function saveSession(value) {
  session = value;
  if (value) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(value));
  else sessionStorage.removeItem(STORAGE_KEY);
  el.whoami.textContent = value ? `Signed in as ${value.user}.` : 'Not signed in.';
  el.signout.hidden = !value;
}

function client(provider) {
  return new LLMProxyClient({ baseUrl: API, provider, getToken: () => (session ? session.token : null) });
}

// --- status and errors -------------------------------------------------------------------------

function setStatus(state, text) {
  el.status.dataset.state = state;
  el.status.textContent = text;
}

function showError(kind, text) {
  el.error.dataset.kind = kind;
  el.error.textContent = text;
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.error.textContent = '';
  delete el.error.dataset.kind;
}

const seconds = (n) => (n === 1 ? '1 second' : `${n} seconds`);

/** An error in plain words: [kind, sentence]. */
function describe(err, tokens = 0) {
  if (err instanceof ProxyHTTPError) {
    const wait = err.retryAfter != null ? ` Try again in ${seconds(err.retryAfter)}.` : '';
    if (err.status === 401) return ['auth', `You are not signed in, or your sign-in has expired: please sign in again. (${err.message})`];
    if (err.status === 403) return ['forbidden', `Your account may not do this: ${err.message}.`];
    if (err.type === 'budget_exceeded') return ['budget', `Your spending budget is used up.${wait} (${err.message})`];
    if (err.type === 'quota_exceeded') return ['quota', `Your token quota is used up.${wait} (${err.message})`];
    if (err.status === 429) {
      const who = err.type === 'upstream_rate_limited' ? 'The model provider is' : 'You are';
      return ['rate_limited', `${who} sending too many requests.${wait || ' Wait a little and try again.'}`];
    }
    if (err.status === 413) return ['request', 'The prompt (with its image) is too large for this proxy.'];
    if (err.status === 504) return ['upstream', `The model provider did not answer in time (HTTP 504). Try again later.`];
    if (err.status >= 500) {
      const tries = err.attempts > 1 ? ` after ${err.attempts} attempts` : '';
      return ['upstream', `The model provider failed${tries} (HTTP ${err.status}: ${err.message}). Try again later.`];
    }
    return ['request', `The proxy refused the request (HTTP ${err.status}): ${err.message}`];
  }
  if (err instanceof ProxyStreamError) {
    const after = `after ${tokens} token${tokens === 1 ? '' : 's'}`;
    if (err.code === 'STREAM_INCOMPLETE') return ['stream', `The connection was cut ${after}: the answer is incomplete.`];
    return ['stream', `The answer stopped ${after}: ${err.message} (${err.code}, status ${err.statusCode}).`];
  }
  if (err instanceof ProxyTimeoutError) {
    return ['timeout', err.phase === 'stream' ? 'The answer stalled: nothing arrived for too long.' : 'The proxy did not answer in time.'];
  }
  if (err instanceof ProxyNetworkError) {
    return ['network', `Could not reach the proxy at ${API}. The network may be down or the proxy not running, or ` +
      `it does not accept requests from this page's origin (${location.origin}): a CORS refusal looks the same to a page.`];
  }
  return ['other', `Something went wrong: ${err && err.message ? err.message : err}`];
}

// --- sign-in and models ------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  clearError();
  const user = el.user.value.trim() || 'demo-user';
  setStatus('busy', 'Signing in…');
  try {
    const resp = await fetch(TOKEN_URL, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user }),
    });
    if (!resp.ok) throw new Error(resp.status === 404 ? 'the dev token endpoint is off (set EXAMPLE_DEV_TOKENS=1)' : `HTTP ${resp.status}`);
    const body = await resp.json();
    saveSession({ token: body.token, user: body.user });
    setStatus('idle', 'Signed in.');
  } catch (err) {
    setStatus('error', 'Sign-in failed.');
    showError('auth', `Sign-in failed: ${err.message}`);
    return;
  }
  await loadModels();
}

function signOut() {
  saveSession(null);
  setStatus('idle', 'Signed out.');
}

async function loadModels({ quiet401 = false } = {}) {
  const seq = ++modelsLoad;
  try {
    const body = await client(null).models();
    if (seq !== modelsLoad) return;
    providers = { ...(body.providers || {}) };
    for (const [name, p] of Object.entries(body.profiles || {})) {
      providers[`profiles/${name}`] = { type: 'profile', provider: p.provider, models: p.models, endpoint: p.endpoint };
    }
    fillProviders();
  } catch (err) {
    if (seq !== modelsLoad) return;
    providers = {};
    fillProviders();
    if (quiet401 && err instanceof ProxyHTTPError && err.status === 401) {
      el.modelHint.textContent = 'Sign in to see the models you may use.';
      return;
    }
    const [kind, text] = describe(err);
    showError(kind, `Could not load the model list. ${text}`);
  }
}

function fillProviders() {
  const preset = params.get('provider');
  const previous = el.provider.value || preset;
  const names = Object.keys(providers);
  if (!names.length && preset) names.push(preset); // models unavailable: keep the preset usable
  el.provider.replaceChildren(...names.map((name) => {
    const p = providers[name];
    if (p && p.type === 'profile') return new Option(`profile: ${name.slice('profiles/'.length)} (${p.provider})`, name);
    return new Option(p && p.type !== name ? `${name} (${p.type})` : name, name);
  }));
  if (names.includes(previous)) el.provider.value = previous;
  fillModels(true);
}

const isPattern = (m) => /[*?[]/.test(m);

function fillModels(usePreset = false) {
  const p = providers[el.provider.value];
  const models = p ? p.models : [];
  el.modelOptions.replaceChildren(...models.filter((m) => !isPattern(m)).map((m) => new Option(m)));
  const preset = usePreset ? params.get('model') : null;
  el.model.value = preset || models.find((m) => !isPattern(m)) || models[0] || el.model.value;
  const patterns = models.filter(isPattern);
  el.modelHint.textContent = !p ? '' : `Allowed: ${models.join(', ')}` +
    (patterns.length ? ' (a pattern: edit it into a full model name).' : '.');
}

// --- the image attachment ----------------------------------------------------------------------

const IMAGE_HINT = 'Optional: sent with the prompt as an image block.';

/** The chosen file as the proxy's image block (base64 source), or null. The proxy checks its
 *  type against its first bytes and its size against the provider's limits. */
function readImage() {
  const file = el.image.files && el.image.files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result); // data:<type>;base64,<data>
      const comma = url.indexOf(',');
      resolve({ type: 'image', source: { type: 'base64', media_type: file.type, data: url.slice(comma + 1) } });
    };
    reader.onerror = () => reject(reader.error || new Error('the file could not be read'));
    reader.readAsDataURL(file);
  });
}

function showImageChoice() {
  const file = el.image.files && el.image.files[0];
  el.imageClear.hidden = !file;
  el.imageInfo.textContent = file ? `${file.name} (${file.type || 'unknown type'}, ${Math.ceil(file.size / 1024)} kB)` : IMAGE_HINT;
}

function clearImage() {
  el.image.value = '';
  showImageChoice();
}

// --- the chat ----------------------------------------------------------------------------------

function resetOutput() {
  el.output.replaceChildren();
  el.ttfb.textContent = '—';
  el.tokens.textContent = '0';
  el.usage.textContent = '—';
  el.cost.textContent = '—';
}

function formatCost(usd) {
  if (typeof usd !== 'number' || !Number.isFinite(usd)) return '—';
  return usd < 0.01 ? `$${usd.toFixed(6)}` : `$${usd.toFixed(4)}`;
}

async function send(event) {
  event.preventDefault();
  if (running) return;
  clearError();
  const provider = el.provider.value;
  const model = el.model.value.trim();
  const prompt = el.prompt.value;
  if (!provider) { showError('request', 'Choose a provider first (sign in to load the list).'); return; }
  if (!model || isPattern(model)) { showError('request', 'Type a full model name (a pattern such as claude-* is not a model).'); return; }
  if (!prompt.trim()) { showError('request', 'Type a prompt first.'); return; }

  resetOutput();
  const text = document.createTextNode('');
  el.output.append(text);
  const controller = new AbortController();
  running = controller;
  el.send.disabled = true;
  el.stop.disabled = false;
  setStatus('connecting', 'Connecting…');
  const started = performance.now();
  let count = 0;
  try {
    const system = el.system.value.trim();
    const image = await readImage();
    const body = {
      model,
      messages: [...(system ? [{ role: 'system', content: system }] : []),
        { role: 'user', content: image ? [{ type: 'text', text: prompt }, image] : prompt }],
      max_tokens: Number(el.maxTokens.value) || 256,
    };
    for await (const chunk of client(provider).stream(body, { signal: controller.signal })) {
      if (chunk.isFirst) {
        const ms = typeof chunk.ttfbMs === 'number' ? chunk.ttfbMs : Math.round(performance.now() - started);
        el.ttfb.textContent = `${ms} ms`;
        setStatus('streaming', 'Streaming…');
      }
      if (chunk.token) {
        text.appendData(chunk.token);
        count += 1;
      }
      if (chunk.toolCall) {
        const call = document.createElement('div');
        call.className = 'tool-call';
        call.textContent = `Tool call: ${chunk.toolCall.name}(${JSON.stringify(chunk.toolCall.arguments)})`;
        el.output.append(call);
        count += 1;
      }
      el.tokens.textContent = String(count);
      if (chunk.isLast) {
        const u = chunk.usage || {};
        if (u.inputTokens != null) el.usage.textContent = `${u.inputTokens} in / ${u.outputTokens} out`;
        el.cost.textContent = formatCost(u.costUsd);
        setStatus('done', `Done (${chunk.finishReason || 'stop'}).`);
      }
    }
    if (el.status.dataset.state !== 'done') setStatus('done', 'Done.');
  } catch (err) {
    if (controller.signal.aborted) {
      setStatus('stopped', 'Stopped.');
    } else {
      const [kind, sentence] = describe(err, count);
      setStatus('error', 'Failed.');
      showError(kind, sentence);
    }
  } finally {
    running = null;
    el.send.disabled = false;
    el.stop.disabled = true;
  }
}

function stop() {
  if (running) running.abort();
}

// --- start ---------------------------------------------------------------------------------------

el.apiUrl.textContent = new URL(API, location.href).href;
if (params.get('user')) el.user.value = params.get('user');
el.signinForm.addEventListener('submit', signIn);
el.signout.addEventListener('click', signOut);
el.chatForm.addEventListener('submit', send);
el.stop.addEventListener('click', stop);
el.provider.addEventListener('change', () => fillModels(false));
el.image.addEventListener('change', showImageChoice);
el.imageClear.addEventListener('click', clearImage);
el.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) el.chatForm.requestSubmit();
});
saveSession(session);
fillProviders();
loadModels({ quiet401: !session });
document.body.dataset.ready = '1';
