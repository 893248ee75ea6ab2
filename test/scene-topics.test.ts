/**
 * Topic names a broker refuses are refused up front, naming the value: Mosquitto drops the
 * connection of a client that publishes to (or sets a will on) a topic with a control character
 * or invalid UTF-8, so the agent would reconnect forever without a message getting through.
 */
import test from 'ava';
import { homeAssistantDiscovery } from '../agent/mqtt/home-assistant.js';
import { agentTopics, TopicError, validatePublishTopic } from '../agent/mqtt/topics.js';

test('topics: a base topic, agent id or discovery prefix with a control character or an unpaired surrogate is refused', (t) => {
  t.throws(() => agentTopics('shelf\twatch', 'a1'), {
    instanceOf: TopicError,
    message: 'base topic "shelf\\twatch" level "shelf\\twatch" contains a control character (U+0009); MQTT brokers refuse such topics',
  });
  t.throws(() => agentTopics('stores/042\n', 'a1'), { message: /contains a control character \(U\+000A\)/ });
  t.throws(() => agentTopics('shelf\u0085watch', 'a1'), { message: /contains a control character \(U\+0085\)/ });
  t.throws(() => agentTopics('shelf\u007fwatch', 'a1'), { message: /contains a control character \(U\+007F\)/ });
  t.throws(() => agentTopics('shelfwatch', 'a\u0001'), { message: /^agent id "a\\u0001" contains a control character \(U\+0001\)/ });
  t.throws(() => agentTopics('shelf\ud800watch', 'a1'), { message: /contains an unpaired surrogate \(not valid UTF-8\) \(U\+D800\)/ });
  t.throws(() => agentTopics('shelfwatch', 'a1').slot('cam\r', 'A1'), { message: /^camera id "cam\\r" contains a control character/ });
  // Any other Unicode is fine (UTF-8 on the wire), a surrogate pair included.
  t.is(agentTopics('shélf/wätch😀', 'a1').status, 'shélf/wätch😀/a1/status');
  t.throws(() => homeAssistantDiscovery({ topics: agentTopics('shelfwatch', 'a1'), slots: [{ camera: 'c', slot: 'A1' }], discoveryPrefix: 'home\tassistant' }), {
    message: /base topic "home\\tassistant" level .* contains a control character \(U\+0009\)/,
  });
});

test('topics: the outbox check of a publish topic refuses control characters too', (t) => {
  t.is(validatePublishTopic('shelfwatch/a1/status'), 'shelfwatch/a1/status');
  t.throws(() => validatePublishTopic('shelfwatch/a1\t/status'), { instanceOf: TopicError, message: /contains a control character or an unpaired surrogate/ });
  t.throws(() => validatePublishTopic('shelfwatch/\udc00/status'), { instanceOf: TopicError });
});
