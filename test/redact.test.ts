import test from 'ava';
import { isSecretKey, redactText, redactUrl } from '../agent/redact.js';

test('redactUrl: the password of the userinfo, cut at the last @ of the authority as ffmpeg cuts it', (t) => {
  t.is(redactUrl('rtsp://admin:pw@cam/stream1'), 'rtsp://admin:***@cam/stream1');
  t.is(redactUrl('rtsp://admin:p@ss@10.0.0.5:554/s?x=1'), 'rtsp://admin:***@10.0.0.5:554/s?x=1');
  t.is(redactUrl('mqtts://agent:s3cret@broker.example:8883'), 'mqtts://agent:***@broker.example:8883');
  t.is(redactUrl('http://user@cam/snap.jpg'), 'http://user@cam/snap.jpg');
});

test('redactUrl: secret query values, by name, whatever the case or encoding', (t) => {
  t.is(redactUrl('http://cam/snapshot.cgi?user=admin&pwd=abc&chn=1'), 'http://cam/snapshot.cgi?user=admin&pwd=***&chn=1');
  t.is(redactUrl('https://models.example/m.onnx?X-Amz-Signature=f00&token=t0k&api_key=k&Password=x'), 'https://models.example/m.onnx?X-Amz-Signature=***&token=***&api_key=***&Password=***');
  t.is(redactUrl('https://s/x?access%5Ftoken=z#frag'), 'https://s/x?access%5Ftoken=***#frag');
  t.is(redactUrl('http://cam/a.cgi?auth=1&sig=2&pw=3&user=u'), 'http://cam/a.cgi?auth=***&sig=***&pw=***&user=u');
});

test('redactUrl: paths, devices and plain text pass unchanged', (t) => {
  for (const s of ['/dev/video0', './shelf.mp4', 'C:\\videos\\a.mp4', 'not a url', '']) t.is(redactUrl(s), s);
});

test('redactText: the raw input and any other URL in a line are masked', (t) => {
  const raw = 'rtsp://admin:pw@cam/s';
  t.is(redactText(`${raw}: Connection refused`, raw, redactUrl(raw)), 'rtsp://admin:***@cam/s: Connection refused');
  t.is(redactText('fetching http://u:p@h/x?pwd=1 failed'), 'fetching http://u:***@h/x?pwd=*** failed');
});

test('isSecretKey: the config keys never printed', (t) => {
  for (const k of ['password', 'mqtt.password', 'apiKey', 'token', 'Authorization', 'cookie', 'clientSecret']) t.true(isSecretKey(k), k);
  for (const k of ['url', 'username', 'fps', 'keyframe']) t.false(isSecretKey(k), k);
});
