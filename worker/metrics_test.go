package worker

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCancelCounter: a cancellation published by the HTTP API or the
// console counts in jetmail_cancelled_total and, as the event it
// publishes, in jetmail_results_total{state="cancelled",status="410"}, as
// seen through the registry.
func TestCancelCounter(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	c := m.CancelCounter()
	c.Inc()
	c.Add(2)
	if got := testutil.ToFloat64(m.Cancelled); got != 3 {
		t.Errorf("jetmail_cancelled_total = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.Results.WithLabelValues("cancelled", "410")); got != 3 {
		t.Errorf(`jetmail_results_total{state="cancelled",status="410"} = %v, want 3`, got)
	}
	if n, err := testutil.GatherAndCount(reg, "jetmail_results_total"); err != nil || n != 1 {
		t.Errorf("jetmail_results_total has %d series (%v), want the one of cancelled", n, err)
	}
}
