// Package metrics owns cdh-proxy's Prometheus registry: Go runtime and
// process metrics, cache and KBS counters read at scrape time, HTTP answers
// by route and status, KBS latency by step.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

// StatsSource is what /metrics reads at scrape time, so the request path
// pays nothing for most metrics.
type StatsSource struct {
	Cache       func() cache.Stats
	KBS         func() kbsclient.Stats
	TokenExpiry func() time.Time
}

// Metrics owns one Prometheus registry (no global state): Go runtime and
// process metrics, cdh-proxy's cache and KBS counters read at scrape time,
// HTTP requests by route and status, and KBS latency by step.
type Metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	resourceOK prometheus.Counter // pre-resolved: the warm path only adds
	kbs        *prometheus.HistogramVec
	pulls      *prometheus.HistogramVec
	pullBytes  prometheus.Counter
}

// New builds the registry.
func New(src StatsSource) (*Metrics, error) {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cdh_proxy_http_requests_total", Help: "HTTP requests by route and status.",
		}, []string{"route", "status"}),
		kbs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cdh_proxy_kbs_step_seconds", Help: "Time per KBS client step (keygen, auth, evidence, attest, resource, decrypt).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"step"}),
	}
	m.pulls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cdh_proxy_image_pull_seconds", Help: "Guest image pulls (PullImage) by result, and their time.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200},
	}, []string{"result"})
	m.pullBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cdh_proxy_image_pull_bytes_total", Help: "Layer bytes downloaded by guest image pulls (layers already stored cost none).",
	})
	m.resourceOK = m.requests.WithLabelValues("resource", "200")
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&statsCollector{src: src}, m.requests, m.kbs, m.pulls, m.pullBytes,
	} {
		if err := m.reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Handler serves the Prometheus text format.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

// ObserveKBS is a kbsclient Trace function.
func (m *Metrics) ObserveKBS(step string, d time.Duration) {
	m.kbs.WithLabelValues(step).Observe(d.Seconds())
}

// ObserveImagePull records one PullImage (imagepull.Observer); the
// histogram's _count by result is the pull counter.
func (m *Metrics) ObserveImagePull(result string, bytes int64, d time.Duration) {
	m.pulls.WithLabelValues(result).Observe(d.Seconds())
	m.pullBytes.Add(float64(bytes))
}

// Count records one answered request; nil-safe so handlers need no checks.
func (m *Metrics) Count(route string, status int) {
	if m == nil {
		return
	}
	if route == "resource" && status == http.StatusOK {
		m.resourceOK.Inc()
		return
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
}

var (
	descCacheHits      = prometheus.NewDesc("cdh_proxy_cache_hits_total", "Requests served from the cache.", nil, nil)
	descCacheMisses    = prometheus.NewDesc("cdh_proxy_cache_misses_total", "Requests that needed a KBS fetch (or joined one).", nil, nil)
	descCacheEvictions = prometheus.NewDesc("cdh_proxy_cache_evictions_total", "Entries evicted, expired or replaced (their plaintext zeroed).", nil, nil)
	descCacheFetches   = prometheus.NewDesc("cdh_proxy_cache_fetches_total", "Coalesced fetches started, by result.", []string{"result"}, nil)
	descCacheEntries   = prometheus.NewDesc("cdh_proxy_cache_entries", "Cached secrets.", nil, nil)
	descCacheBytes     = prometheus.NewDesc("cdh_proxy_cache_bytes", "Cached plaintext bytes.", nil, nil)
	descAttestations   = prometheus.NewDesc("cdh_proxy_attestations_total", "RCAR handshakes, by result.", []string{"result"}, nil)
	descKBSResources   = prometheus.NewDesc("cdh_proxy_kbs_resource_requests_total", "Resource and plugin GETs sent to the KBS.", nil, nil)
	descFailovers      = prometheus.NewDesc("cdh_proxy_kbs_failovers_total", "Moves away from a KBS endpoint that stopped answering.", nil, nil)
	descMismatches     = prometheus.NewDesc("cdh_proxy_kbs_protocol_mismatch_total", "Handshakes a KBS refused for cdh-proxy's KBS protocol version.", nil, nil)
	descEndpointActive = prometheus.NewDesc("cdh_proxy_kbs_endpoint_active", "1 for the KBS endpoint in use (holding the token, or tried next).", []string{"kbs"}, nil)
	descEndpointReqs   = prometheus.NewDesc("cdh_proxy_kbs_endpoint_requests_total", "Requests sent to each KBS endpoint (auth, attest, resource, plugin).", []string{"kbs"}, nil)
	descEndpointAtt    = prometheus.NewDesc("cdh_proxy_kbs_endpoint_attestations_total", "RCAR handshakes per KBS endpoint, by result.", []string{"kbs", "result"}, nil)
	descTokenExpiry    = prometheus.NewDesc("cdh_proxy_token_expiry_timestamp_seconds", "When the held KBS token expires (Unix time; 0 when none).", nil, nil)
)

type statsCollector struct{ src StatsSource }

func (s *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheEvictions, descCacheFetches, descCacheEntries, descCacheBytes, descAttestations, descKBSResources, descTokenExpiry,
		descFailovers, descMismatches, descEndpointActive, descEndpointReqs, descEndpointAtt} {
		ch <- d
	}
}

func (s *statsCollector) Collect(ch chan<- prometheus.Metric) {
	if s.src.Cache != nil {
		c := s.src.Cache()
		ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(c.Hits))
		ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(c.Misses))
		ch <- prometheus.MustNewConstMetric(descCacheEvictions, prometheus.CounterValue, float64(c.Evictions))
		ch <- prometheus.MustNewConstMetric(descCacheFetches, prometheus.CounterValue, float64(c.Fetches-c.FetchErrors), "ok")
		ch <- prometheus.MustNewConstMetric(descCacheFetches, prometheus.CounterValue, float64(c.FetchErrors), "error")
		ch <- prometheus.MustNewConstMetric(descCacheEntries, prometheus.GaugeValue, float64(c.Entries))
		ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(c.Bytes))
	}
	if s.src.KBS != nil {
		k := s.src.KBS()
		ch <- prometheus.MustNewConstMetric(descAttestations, prometheus.CounterValue, float64(k.Handshakes), "ok")
		ch <- prometheus.MustNewConstMetric(descAttestations, prometheus.CounterValue, float64(k.HandshakeErrors), "error")
		ch <- prometheus.MustNewConstMetric(descKBSResources, prometheus.CounterValue, float64(k.ResourceRequests))
		ch <- prometheus.MustNewConstMetric(descFailovers, prometheus.CounterValue, float64(k.Failovers))
		ch <- prometheus.MustNewConstMetric(descMismatches, prometheus.CounterValue, float64(k.ProtocolMismatches))
		for _, ep := range k.Endpoints {
			active := 0.0
			if ep.Active {
				active = 1
			}
			ch <- prometheus.MustNewConstMetric(descEndpointActive, prometheus.GaugeValue, active, ep.URL)
			ch <- prometheus.MustNewConstMetric(descEndpointReqs, prometheus.CounterValue, float64(ep.Requests), ep.URL)
			ch <- prometheus.MustNewConstMetric(descEndpointAtt, prometheus.CounterValue, float64(ep.Handshakes), ep.URL, "ok")
			ch <- prometheus.MustNewConstMetric(descEndpointAtt, prometheus.CounterValue, float64(ep.HandshakeErrors), ep.URL, "error")
		}
	}
	if s.src.TokenExpiry != nil {
		exp := 0.0
		if t := s.src.TokenExpiry(); !t.IsZero() {
			exp = float64(t.Unix())
		}
		ch <- prometheus.MustNewConstMetric(descTokenExpiry, prometheus.GaugeValue, exp)
	}
}
