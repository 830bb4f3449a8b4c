// Self-check of the harness's own request signer against the worked example
// in spec §12.2 (no server involved), so that HTTP tests signed here can be
// trusted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

import { restSignature } from './harness.mjs';

test('harness request signer reproduces the spec §12.2 worked example', () => {
  const body = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}';
  const bodyMd5 = createHash('md5').update(body).digest('hex');
  assert.equal(bodyMd5, 'ec365a775a4cd0599faeb73354201b6f');
  const sig = restSignature('7ad3773142a6692b25b8', 'POST', '/apps/3/events', {
    auth_key: '278d425bdf160c739803',
    auth_timestamp: '1353088179',
    auth_version: '1.0',
    body_md5: bodyMd5,
  });
  assert.equal(sig, 'da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c');
});
