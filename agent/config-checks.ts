/**
 * Cross-field checks: rules that need the whole (substituted) document, such as duplicate ids,
 * slots naming unknown models and TLS options without an encrypted broker URL. They run on the raw
 * value even when the schema fails, so every problem is reported at once.
 */
import { closest, record, type Problem } from './config-errors.js';
import { asNumber, ID_RE, ID_RULE, isReservedName, RESERVED_RULE, SOURCE_TYPES, triggerProblem } from './config-schema.js';

// ---------------------------------------------------------------------------------------------
// Cross-field checks (on the raw, substituted document; tolerant of anything malformed)
// ---------------------------------------------------------------------------------------------

export function crossFieldProblems(doc: unknown): Problem[] {
  const problems: Problem[] = [];
  const root = record(doc);
  if (!root) return problems;

  const models = record(root.models);
  const modelNames = models ? Object.keys(models) : [];
  for (const name of modelNames) {
    if (!ID_RE.test(name)) {
      problems.push({ path: ['models', name], message: `expected a model name of ${ID_RULE}` });
    } else if (isReservedName(name)) {
      problems.push({ path: ['models', name], message: `expected a model name ${RESERVED_RULE}` });
    }
  }

  const mqtt = record(root.mqtt);
  const tls = record(mqtt?.tls);
  if (mqtt && tls) {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      problems.push({ path: ['mqtt', 'tls'], message: "expected 'cert' and 'key' together (client certificate)" });
    }
    if (mqtt.url === undefined) {
      problems.push({
        path: ['mqtt', 'tls'],
        message: 'tls applies to a remote broker: set mqtt.url (mqtts:// or wss://)',
      });
    } else if (typeof mqtt.url === 'string' && /^(mqtt|ws):/i.test(mqtt.url)) {
      problems.push({
        path: ['mqtt', 'url'],
        message: 'tls is configured but the URL is not encrypted: expected mqtts:// or wss://',
        value: mqtt.url,
        showValue: true,
      });
    }
  }

  const debounce = record(root.debounce);
  if (debounce) {
    const raise = asNumber(debounce.raiseAfter ?? 2);
    const window = asNumber(debounce.window ?? 3);
    if (typeof raise === 'number' && typeof window === 'number' && raise > window) {
      problems.push({
        path: ['debounce', 'raiseAfter'],
        message: `expected at most debounce.window (${window}) — K anomalous scans among the last N`,
        value: raise,
        showValue: true,
      });
    }
  }

  const cameras = Array.isArray(root.cameras) ? root.cameras : [];
  const cameraIds = new Map<string, number>();
  cameras.forEach((raw, ci) => {
    const cam = record(raw);
    if (!cam) return;
    if (typeof cam.id === 'string') {
      const first = cameraIds.get(cam.id);
      if (first !== undefined) {
        problems.push({
          path: ['cameras', ci, 'id'],
          message: `duplicate camera id (already used by cameras[${first}])`,
          value: cam.id,
          showValue: true,
        });
      } else cameraIds.set(cam.id, ci);
    }

    const src = record(cam.source);
    const type = typeof src?.type === 'string' ? src.type : undefined;
    if (type && (SOURCE_TYPES as readonly string[]).includes(type)) {
      const problem = triggerProblem(type, cam.schedule !== undefined, cam.continuous !== undefined);
      if (problem) problems.push({ path: ['cameras', ci], message: problem });
    }
    // The schema's record drops a '__proto__' header before its checks see it: look at the keys here.
    const headers = type === 'http-snapshot' ? record(src?.headers) : undefined;
    for (const name of headers ? Object.keys(headers) : []) {
      if (isReservedName(name)) {
        problems.push({ path: ['cameras', ci, 'source', 'headers', name], message: `expected a header name ${RESERVED_RULE}` });
      }
    }
    if (src && type === 'replay') {
      if (src.files !== undefined && src.dir !== undefined) {
        problems.push({ path: ['cameras', ci, 'source'], message: "expected either 'files' or 'dir', not both" });
      } else if (src.files === undefined && src.dir === undefined) {
        problems.push({ path: ['cameras', ci, 'source'], message: "a replay source needs 'files' (a list) or 'dir'" });
      }
    }

    const slots = Array.isArray(cam.slots) ? cam.slots : [];
    const slotIds = new Map<string, number>();
    slots.forEach((rawSlot, si) => {
      const s = record(rawSlot);
      if (!s) return;
      if (typeof s.id === 'string') {
        const first = slotIds.get(s.id);
        if (first !== undefined) {
          problems.push({
            path: ['cameras', ci, 'slots', si, 'id'],
            message: `duplicate slot id in this camera (already used by slots[${first}])`,
            value: s.id,
            showValue: true,
          });
        } else slotIds.set(s.id, si);
      }
      if (typeof s.model === 'string' && s.model !== '' && !modelNames.includes(s.model)) {
        const guess = closest(s.model, modelNames);
        const known = modelNames.length ? `known: ${modelNames.join(', ')}` : '`models` is empty';
        problems.push({
          path: ['cameras', ci, 'slots', si, 'model'],
          message: `unknown model (${guess ? `did you mean '${guess}'? ` : ''}${known})`,
          value: s.model,
          showValue: true,
        });
      }
    });
  });
  return problems;
}
