/**
 * The Audit Log Service from TypeScript (Node.js 18.14+), over the Connect protocol.
 *
 * `src/gen/` is generated from the service's contract, `schemas/audit/v1/audit.proto`, by
 * the Connect-ES toolchain (`npm run generate`: buf and protoc-gen-es); this file only adds
 * {@link createAuditClient}, so the product page's example runs as written:
 *
 * ```ts
 * const auditClient = createAuditClient("http://127.0.0.1:8080", apiKey);
 * const response = await auditClient.writeEvent({
 *   event: {
 *     tenantId: companyId,
 *     action: "security.password_reset",
 *     severity: Severity.SECURITY,
 *     actor: { id: userId, type: ActorType.USER },
 *     primaryResource: { id: userId, type: "user" }
 *   }
 * });
 * console.log('Event registered:', response.eventId);
 * ```
 */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  AuditService,
  type AuditEvent,
  type ListEventsRequestSchema,
} from "./gen/audit/v1/audit_pb.js";

export * from "./gen/audit/v1/audit_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";

/** A client of `audit.v1.AuditService`: writeEvent, writeEvents, listEvents, getEvent. */
export type AuditClient = Client<typeof AuditService>;

export interface AuditClientOptions {
  /** Deadline of each call in milliseconds (default 30,000; a synchronous write waits for
   * its commit, up to the server's AUDIT_WRITE_TIMEOUT_S). */
  timeoutMs?: number;
  /** "1.1" (default) or "2" (HTTP/2 needs the server to speak it). */
  httpVersion?: "1.1" | "2";
  /** JSON on the wire instead of binary protobuf (easier to read in a proxy). */
  useJson?: boolean;
}

/**
 * A client of the service at `baseUrl` (e.g. `http://127.0.0.1:8080`, where REST and
 * Connect share the port) sending `token` (a tenant key, `alk_...`, or the admin token)
 * as `Authorization: Bearer <token>` on every call.
 */
export function createAuditClient(
  baseUrl: string,
  token: string,
  options: AuditClientOptions = {},
): AuditClient {
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("Authorization", `Bearer ${token}`);
    return await next(req);
  };
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: options.httpVersion ?? "1.1",
    useBinaryFormat: !options.useJson,
    interceptors: [bearer],
    defaultTimeoutMs: options.timeoutMs ?? 30_000,
  });
  return createClient(AuditService, transport);
}

/**
 * Every event matching `request`, page after page (it follows `nextPageToken`, which the
 * service signs and binds to the tenant and filters: never build one).
 */
export async function* listAllEvents(
  client: AuditClient,
  request: MessageInitShape<typeof ListEventsRequestSchema>,
): AsyncGenerator<AuditEvent> {
  let pageToken = "";
  do {
    const page = await client.listEvents({ ...request, pageToken });
    yield* page.events;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
}
