/**
 * `shelfwatch config check <file>`: parse the config (every problem at once, with key paths
 * and line numbers), check the files and directories it names, check every camera and slot id
 * as an MQTT topic level, and read each model's manifest (cheap: no inference session) to show
 * its digest, input size and the threshold that will apply. Throws a ConfigError (or an Error
 * naming the model) when something is wrong; returns the summary text when all is well.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { readManifest } from '../../models/manifest.js';
import { decodeModel } from '../../models/onnx/proto.js';
import { checkConfigFiles, ConfigError, formatConfigSummary, loadConfig, type AgentConfig, type ConfigIssue } from '../config.js';
import { discoverySlots } from '../extensions/home-assistant.js';
import { homeAssistantDiscovery } from '../mqtt/home-assistant.js';
import { agentTopics } from '../mqtt/topics.js';

export interface ModelCheck {
  name: string;
  path: string;
  digest: string;
  backbone: string;
  inputSize: number;
  /** The threshold slots of this model get (config override, else the manifest's). */
  threshold: number;
  thresholdSource: 'config' | 'manifest';
  slots: number;
}

export interface ConfigCheckResult {
  config: AgentConfig;
  models: ModelCheck[];
  /** The human-readable report (`OK <file>` …). */
  text: string;
}

export async function runConfigCheck(path: string, options: { env?: NodeJS.ProcessEnv } = {}): Promise<ConfigCheckResult> {
  const config = await loadConfig(path, { env: options.env });
  await checkConfigFiles(config, path);

  const issues: ConfigIssue[] = [];
  let topics: ReturnType<typeof agentTopics> | undefined;
  try {
    topics = agentTopics(config.mqtt.baseTopic, config.agent.id);
  } catch (err) {
    issues.push({ path: 'mqtt.baseTopic', message: (err as Error).message });
  }
  config.cameras.forEach((cam, ci) =>
    cam.slots.forEach((slot, si) => {
      try {
        topics?.slot(cam.id, slot.id);
      } catch (err) {
        issues.push({ path: `cameras[${ci}].slots[${si}]`, message: (err as Error).message });
      }
    }),
  );

  // What the Home Assistant extension refuses at start (two slots with one object id, e.g. camera
  // a_b slot c and camera a slot b_c), refused here.
  if (topics && config.mqtt.homeAssistant.enabled) {
    try {
      homeAssistantDiscovery({
        topics,
        discoveryPrefix: config.mqtt.homeAssistant.discoveryPrefix,
        slots: discoverySlots(config),
      });
    } catch (err) {
      issues.push({ path: 'mqtt.homeAssistant', message: (err as Error).message });
    }
  }

  const models: ModelCheck[] = [];
  for (const [name, model] of Object.entries(config.models)) {
    try {
      const bytes = await readFile(model.path);
      const manifest = readManifest(decodeModel(bytes, model.path), model.path);
      models.push({
        name,
        path: model.path,
        digest: createHash('sha256').update(bytes).digest('hex'),
        backbone: manifest.backbone.id,
        inputSize: manifest.inputSize,
        threshold: model.threshold ?? manifest.thresholds.image,
        thresholdSource: model.threshold !== undefined ? 'config' : 'manifest',
        slots: config.cameras.reduce((n, c) => n + c.slots.filter((s) => s.model === name).length, 0),
      });
    } catch (err) {
      issues.push({ path: `models.${name}.path`, message: `not a usable shelfwatch model: ${(err as Error).message}` });
    }
  }
  if (issues.length) throw new ConfigError(path, issues, 'cannot use');

  const lines = [formatConfigSummary(config, path)];
  if (models.length) {
    lines.push('model files:');
    for (const m of models) {
      lines.push(`  ${m.name}: sha256 ${m.digest.slice(0, 16)}…, ${m.backbone} at ${m.inputSize}px, threshold ${m.threshold.toFixed(4)} (${m.thresholdSource}), ${m.slots} slot${m.slots === 1 ? '' : 's'}`);
    }
  }
  return { config, models, text: lines.join('\n') };
}
