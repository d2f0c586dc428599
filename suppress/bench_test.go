package suppress

import (
	"fmt"
	"testing"
	"time"

	"github.com/jetmail/jetmail/schema"
)

// benchChecker is a Checker whose copy holds n address entries (a third
// of them bounces with an expiry, a third unsubscribes) and n/1000 domain
// entries, as the watch would have loaded them.
func benchChecker(n int) *Checker {
	c := &Checker{now: time.Now, list: newList(), ready: make(chan struct{})}
	exp := time.Now().Add(DefaultBounceTTL)
	reasons := []Reason{Bounce, Unsubscribe, Manual}
	for i := range n {
		e := Entry{Address: fmt.Sprintf("user%d@domain%d.example", i, i%5000), Reason: reasons[i%3], Time: time.Now()}
		if e.Reason == Bounce {
			e.Expires = &exp
		}
		c.list.put(e)
	}
	for i := range n / 1000 {
		c.list.put(Entry{Address: fmt.Sprintf("@blocked%d.example", i), Reason: Manual, Time: time.Now()})
	}
	return c
}

// BenchmarkCheck is the cost of checking one recipient against a list of
// 100,000 entries, as a worker does before each attempt: a mix of
// recipients not listed (most), listed, listed in another case, and in a
// listed domain's subdomain.
//
//	go test -run '^$' -bench 'Check|Skip' -benchmem ./suppress
func BenchmarkCheck(b *testing.B) {
	c := benchChecker(100_000)
	rcpts := []string{
		"someone@gmail.example", "user42@domain42.example", "User43@Domain43.example",
		"x@mail.blocked7.example", "other.person+tag@company.example", "user99999@domain4999.example",
		"nobody@domain1.example", "jan.kowalski@poczta.example",
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Check(rcpts[i%len(rcpts)], schema.LaneBulk, false)
		i++
	}
}

// BenchmarkCheckParallel is BenchmarkCheck from every CPU at once, as a
// worker's handlers do.
func BenchmarkCheckParallel(b *testing.B) {
	c := benchChecker(100_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Check("user42@domain42.example", schema.LaneNormal, false)
			c.Check("someone@gmail.example", schema.LaneNormal, false)
		}
	})
}

// BenchmarkSkip is the one call per message: three recipients, one
// suppressed.
func BenchmarkSkip(b *testing.B) {
	c := benchChecker(100_000)
	req := &schema.Request{}
	rcpts := []string{"jan@company.example", "user3@domain3.example", "ola@company.example"}
	b.ReportAllocs()
	for b.Loop() {
		c.Skip(req, schema.LaneNormal, rcpts)
	}
}
