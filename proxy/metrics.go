package proxy

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
)

// StatsSource is what /metrics reads at scrape time, so the request path
// pays nothing for metrics.
type StatsSource struct {
	Cache func() cache.Stats
	KBS   func() kbsclient.Stats
}

// NewMetricsHandler returns a Prometheus text handler on its own registry
// (no global state): Go runtime and process metrics plus cdh-proxy's
// cache and KBS counters.
func NewMetricsHandler(src StatsSource) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&statsCollector{src: src},
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

var (
	descCacheHits      = prometheus.NewDesc("cdh_proxy_cache_hits_total", "Requests served from the cache.", nil, nil)
	descCacheMisses    = prometheus.NewDesc("cdh_proxy_cache_misses_total", "Requests that needed a KBS fetch (or joined one).", nil, nil)
	descCacheEvictions = prometheus.NewDesc("cdh_proxy_cache_evictions_total", "Entries evicted, expired or replaced (their plaintext zeroed).", nil, nil)
	descCacheFetches   = prometheus.NewDesc("cdh_proxy_cache_fetches_total", "Coalesced fetches started, by result.", []string{"result"}, nil)
	descCacheEntries   = prometheus.NewDesc("cdh_proxy_cache_entries", "Cached secrets.", nil, nil)
	descCacheBytes     = prometheus.NewDesc("cdh_proxy_cache_bytes", "Cached plaintext bytes.", nil, nil)
	descAttestations   = prometheus.NewDesc("cdh_proxy_attestations_total", "RCAR handshakes, by result.", []string{"result"}, nil)
	descKBSResources   = prometheus.NewDesc("cdh_proxy_kbs_resource_requests_total", "Resource GETs sent to the KBS.", nil, nil)
)

type statsCollector struct{ src StatsSource }

func (s *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheEvictions, descCacheFetches, descCacheEntries, descCacheBytes, descAttestations, descKBSResources} {
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
	}
}
