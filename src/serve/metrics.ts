// The page server's metrics, as Prometheus text (prom-client): fault latency by how the page
// was placed, pages placed by fault and by prefetch, REMOVE events and pages, EAGAIN retries,
// EEXIST wakes, bytes read, VMs active and VMs ended by reason.
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Endpoint } from '../transport/index.js';
import { listenOn } from '../transport/index.js';
import type { VmCounters } from './protocol.js';

/** Power-of-two microsecond buckets, as the engines' latency histograms, in seconds. */
const LATENCY_BUCKETS_S = Array.from({ length: 20 }, (_, i) => 2 ** (i + 2) / 1e6);

export class ServeMetrics {
  readonly registry = new Registry();
  private readonly latency = new Histogram({ name: 'postcopy_serve_fault_latency_seconds', help: 'From reading a fault to placing its page, by how the page was placed', labelNames: ['source'], buckets: LATENCY_BUCKETS_S, registers: [this.registry] });
  private readonly placed = new Counter({ name: 'postcopy_serve_pages_placed_total', help: 'Pages placed, by why (fault or prefetch)', labelNames: ['by'], registers: [this.registry] });
  private readonly faults = new Counter({ name: 'postcopy_serve_faults_total', help: 'Fault events read', registers: [this.registry] });
  private readonly removeEvents = new Counter({ name: 'postcopy_serve_remove_events_total', help: 'UFFD_EVENT_REMOVE events (balloon, free page reporting, unplug)', registers: [this.registry] });
  private readonly removedPages = new Counter({ name: 'postcopy_serve_removed_pages_total', help: 'Pages those REMOVE events covered', registers: [this.registry] });
  private readonly eagain = new Counter({ name: 'postcopy_serve_eagain_retries_total', help: 'Placements deferred by EAGAIN and tried again after the events were read', registers: [this.registry] });
  private readonly eexist = new Counter({ name: 'postcopy_serve_eexist_wakes_total', help: 'Pages found already placed (EEXIST), then woken', registers: [this.registry] });
  private readonly bytesRead = new Counter({ name: 'postcopy_serve_bytes_read_total', help: 'Bytes read from the page source', registers: [this.registry] });
  readonly active = new Gauge({ name: 'postcopy_serve_vms_active', help: 'VMs being served', registers: [this.registry] });
  private readonly ended = new Counter({ name: 'postcopy_serve_vms_ended_total', help: 'VMs no longer served, by why', labelNames: ['reason'], registers: [this.registry] });
  private server: Server | undefined;

  /** A VM's counters since its last report. */
  add(c: VmCounters): void {
    this.faults.inc(c.faults);
    this.placed.inc({ by: 'fault' }, c.placedByFault);
    this.placed.inc({ by: 'prefetch' }, c.placedByPrefetch);
    this.removeEvents.inc(c.removeEvents);
    this.removedPages.inc(c.removedPages);
    this.eagain.inc(c.eagainRetries);
    this.eexist.inc(c.eexistWakes);
    this.bytesRead.inc(c.bytesRead);
    for (const [source, samples] of Object.entries(c.latency)) for (const us of samples) this.latency.observe({ source }, us / 1e6);
  }

  /** `reason`: exited, refused, failed, stopped. */
  vmEnded(reason: string): void {
    this.ended.inc({ reason });
  }

  /** Serves GET /metrics (any path) as Prometheus text; resolves with where it listens. */
  async listen(endpoint: Endpoint): Promise<Endpoint> {
    this.server = createServer((request, response) => {
      this.registry.metrics().then((text) => {
        response.writeHead(200, { 'content-type': this.registry.contentType });
        response.end(text);
      }, (error: Error) => {
        response.writeHead(500);
        response.end(error.message);
      });
    });
    return listenOn(this.server, endpoint);
  }

  close(): void {
    this.server?.close();
  }
}
