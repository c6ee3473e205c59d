/**
 * Errors answered before a route runs, over a real socket: a path parameter longer than the router
 * allows (414, fastify's router) and headers larger than Node's parser allows (431, Node's HTTP
 * server, before fastify sees the request). Both answer in the envelope of the API family the path
 * belongs to, like every other error, and never in fastify's own format.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { assertCinderError, assertKeystoneError, assertVbsError } from '../helpers/api.ts';
import { startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

/** Sends `request` as is and reads the answer until the server closes or has sent the whole body. */
function rawRequest(port: number, request: string): Promise<{ statusCode: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    const done = (): void => {
      const split = data.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`no HTTP response: ${JSON.stringify(data.slice(0, 200))}`));
      const [status, ...lines] = data.slice(0, split).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      resolve({ statusCode: Number(/^HTTP\/1\.1 (\d{3}) /.exec(status!)?.[1]), headers, body: data.slice(split + 4) });
    };
    socket.setEncoding('utf8');
    socket.on('data', (s: string) => {
      data += s;
      const split = data.indexOf('\r\n\r\n');
      const len = /\r\ncontent-length: (\d+)/i.exec(data.slice(0, split))?.[1];
      if (split >= 0 && len !== undefined && Buffer.byteLength(data.slice(split + 4)) >= Number(len)) {
        socket.destroy();
        done();
      }
    });
    socket.on('error', () => {}); // the server may reset after answering; 'close' reports
    socket.on('close', () => done());
    socket.write(request);
  });
}

/** The shape the envelope assertions take (they read statusCode, headers, body and json()). */
function asResponse(r: { statusCode: number; headers: Record<string, string>; body: string }): LightMyRequestResponse {
  return { ...r, json: () => JSON.parse(r.body) as unknown } as unknown as LightMyRequestResponse;
}

describe('errors answered before a route runs, over a socket', () => {
  const temp = new TempDirs('haven-socket-errors-');
  let svc: TestService;
  let port: number;
  before(async () => {
    svc = await startService(temp, {}, { runJobs: false });
    port = Number(new URL(await svc.app.server.listen({ host: '127.0.0.1', port: 0 })).port);
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const longId = 'a'.repeat(600);
  const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n${extra}Connection: close\r\n\r\n`;

  it('414 for a 600-character id, in each family\'s envelope', async () => {
    const cinder = asResponse(await rawRequest(port, get(`/v3/p1/volumes/${longId}`)));
    assert.match(assertCinderError(cinder, 414), /longer than 500 characters/);
    assert.deepEqual(Object.keys(cinder.json() as object), ['badRequest']);
    const vbs = asResponse(await rawRequest(port, get(`/v1/p1/jobs/${longId}`)));
    assertVbsError(vbs, 414, 'VolumeBackup.0002');
    const keystone = asResponse(await rawRequest(port, get(`/v3/projects/${longId}`)));
    assertKeystoneError(keystone, 414);
    assert.equal((keystone.json() as { error: { title: string } }).error.title, 'URI Too Long');
    const csbs = await rawRequest(port, get(`/v1/p1/checkpoint_items/${longId}`));
    assert.equal(csbs.statusCode, 414);
    assert.deepEqual(JSON.parse(csbs.body), { error_code: 'CSBS.9001', error_msg: 'The request URI is too long: a path parameter is longer than 500 characters.' });
    // Nothing of the path is echoed back.
    for (const r of [cinder, vbs, keystone]) assert.doesNotMatch(r.body, /aaaaaaaaaa/);
  });

  it('431 for oversized headers, in each family\'s envelope', async () => {
    const big = `X-Padding: ${'h'.repeat(20_000)}\r\n`;
    const cinder = asResponse(await rawRequest(port, get('/v3/p1/volumes', big)));
    assert.match(assertCinderError(cinder, 431), /header fields are too large/);
    assert.deepEqual(Object.keys(cinder.json() as object), ['badRequest']);
    assertVbsError(asResponse(await rawRequest(port, get('/v2/p1/cloudbackups', big))), 431, 'VolumeBackup.0002');
    const keystone = asResponse(await rawRequest(port, get('/v3/auth/tokens', big)));
    assertKeystoneError(keystone, 431);
    assert.equal((keystone.json() as { error: { title: string } }).error.title, 'Request Header Fields Too Large');
    const csbs = await rawRequest(port, get('/v1/p1/checkpoint_items', big));
    assert.equal(csbs.statusCode, 431);
    assert.deepEqual(Object.keys(JSON.parse(csbs.body) as object).sort(), ['error_code', 'error_msg']);
  });

  it('a path parameter that is not valid percent-encoding is a 400 in the envelope', async () => {
    const r = asResponse(await rawRequest(port, get('/v3/p1/volumes/%zz')));
    assert.match(assertCinderError(r, 400), /bad percent-encoding/);
  });

  it('a malformed request is a 400 in the envelope, and the server keeps serving', async () => {
    const bad = await rawRequest(port, 'GET /v3/p1/volumes HTTP/1.1\r\nHost: localhost\r\nBad Header Line\r\n\r\n');
    assertCinderError(asResponse(bad), 400);
    const ok = await rawRequest(port, get('/'));
    assert.equal(ok.statusCode, 300, ok.body);
  });
});
