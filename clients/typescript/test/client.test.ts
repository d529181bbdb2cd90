/**
 * The TypeScript client against a real service started here (test/service.ts): the product
 * page's example as written, batch writes, listing with page tokens, get, errors.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";

import {
  ActorType,
  Code,
  ConnectError,
  Severity,
  createAuditClient,
  listAllEvents,
  type AuditClient,
} from "../src/index.js";
import { startService, type Service } from "./service.js";

let service: Service;
let auditClient: AuditClient;
const companyId = `ts-${randomUUID()}`;

before(async () => {
  service = await startService();
  auditClient = createAuditClient(service.baseUrl, await service.tenantKey(companyId));
});

after(async () => {
  await service?.stop();
});

test("the product page's writeEvent example runs as written; the event reads back", async () => {
  const userId = "user-123";
  const logged: unknown[][] = [];
  const console = { log: (...args: unknown[]) => logged.push(args) };
  // -- the product page, verbatim --
  const response = await auditClient.writeEvent({
  event: {
  tenantId: companyId,
  action: "security.password_reset",
  severity: Severity.SECURITY,
  actor: { id: userId, type: ActorType.USER },
  primaryResource: { id: userId, type: "user" }
  }
  });
  console.log('Event registered:', response.eventId);
  // -- end --
  assert.deepEqual(logged, [["Event registered:", response.eventId]]);
  assert.match(response.eventId, /^[0-9a-f-]{36}$/);
  const { event } = await auditClient.getEvent({ id: response.eventId, tenantId: companyId });
  assert.ok(event);
  assert.equal(event.id, response.eventId);
  assert.equal(event.tenantId, companyId);
  assert.equal(event.action, "security.password_reset");
  assert.equal(event.severity, Severity.SECURITY);
  assert.equal(event.actor?.type, ActorType.USER);
  assert.equal(event.primaryResource?.id, userId);
  assert.ok(event.seq > 0n && event.hash.length === 64);
});

test("a batch is written, then listed page by page with page tokens", async () => {
  const actions = Array.from({ length: 25 }, (_, i) => `report.export_${i}`);
  const batch = await auditClient.writeEvents({
    events: actions.map((action) => ({
      tenantId: companyId,
      action,
      severity: Severity.INFO,
      actor: { id: "svc-reports", type: ActorType.SERVICE },
      metadata: { rows: 10 },
    })),
  });
  assert.equal(batch.errors.length, 0);
  assert.equal(batch.eventIds.length, 25);

  const first = await auditClient.listEvents({ tenantId: companyId, pageSize: 10 });
  assert.equal(first.events.length, 10);
  assert.notEqual(first.nextPageToken, "");
  const second = await auditClient.listEvents({
    tenantId: companyId,
    pageSize: 10,
    pageToken: first.nextPageToken,
  });
  const firstIds = new Set(first.events.map((e) => e.id));
  assert.ok(second.events.every((e) => !firstIds.has(e.id)), "pages do not overlap");

  const all = [];
  for await (const e of listAllEvents(auditClient, { tenantId: companyId, pageSize: 10 })) {
    all.push(e);
  }
  const listed = new Set(all.map((e) => e.id));
  assert.ok(batch.eventIds.every((id) => listed.has(id)), "every written event is listed");
  const security = await auditClient.listEvents({
    tenantId: companyId,
    severities: [Severity.SECURITY],
  });
  assert.ok(security.events.every((e) => e.severity === Severity.SECURITY));
  const one = await auditClient.getEvent({ id: batch.eventIds[7], tenantId: companyId });
  assert.equal(one.event?.action, "report.export_7");
  assert.equal(one.event?.metadata?.rows, 10);
});

test("errors are ConnectErrors with the service's codes", async () => {
  const stranger = createAuditClient(service.baseUrl, "alk_0123456789abcdef_not-a-real-token-0000");
  await assert.rejects(
    stranger.listEvents({ tenantId: companyId }),
    (err: unknown) => err instanceof ConnectError && err.code === Code.Unauthenticated,
  );
  await assert.rejects(
    auditClient.getEvent({ id: randomUUID(), tenantId: companyId }),
    (err: unknown) => err instanceof ConnectError && err.code === Code.NotFound,
  );
  await assert.rejects(
    auditClient.writeEvent({ event: { tenantId: companyId, action: "" } }),
    (err: unknown) => err instanceof ConnectError && err.code === Code.InvalidArgument,
  );
});

test("the README's Node.js snippet verifies a webhook signature made by the service", async () => {
  const readme = await readFile(new URL("../../../../README.md", import.meta.url), "utf8");
  const start = readme.indexOf("function verify(header, body");
  const code = readme.slice(start, readme.indexOf("```", start));
  const verify = new Function("createHmac", "timingSafeEqual", `${code}; return verify;`)(
    createHmac,
    timingSafeEqual,
  ) as (header: string, body: Buffer, secret: string, toleranceS?: number) => boolean;
  // Made by pipeline/stream_format.py's signature() during a rotation's overlap (two v1=).
  const body = Buffer.from(
    '{"stream_id":"st_0123456789abcdef","tenant_id":"acme","first_seq":1,"last_seq":1,"records":[]}',
  );
  const header =
    "t=1800000000,v1=8821f780208eb669a34c0051304477d526df05a0c0c227f1de5db66b571001ef," +
    "v1=b7f131bd6947900ce428a486cf93842012e38585d4a12e22fc2846eee97ed774";
  const forever = 1e12; // the vector is fixed in time
  assert.ok(verify(header, body, "whsec_new-secret-for-the-readme-test", forever));
  assert.ok(verify(header, body, "whsec_old-secret-for-the-readme-test", forever));
  assert.ok(!verify(header, body, "whsec_some-other-secret", forever));
  assert.ok(!verify(header, Buffer.concat([body, Buffer.from(" ")]), "whsec_new-secret-for-the-readme-test", forever));
  assert.ok(!verify(header, body, "whsec_new-secret-for-the-readme-test"), "too old");
});
