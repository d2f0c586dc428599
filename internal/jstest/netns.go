package jstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// NetNS is a Linux network namespace joined to the test's own by a veth
// pair: a machine of its own on the network, which a test can cut off and
// reconnect. Making one needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and the
// ip and nft commands; NewNetNS skips the test, saying what is missing,
// when they are not there.
type NetNS struct {
	t testing.TB
	// Name is the namespace's name (ip netns exec Name …).
	Name string
	// HostAddr is the test's end of the veth pair, NSAddr the namespace's.
	HostAddr, NSAddr string
	hostIf           string
}

var netnsSeq atomic.Int32

// NewNetNS makes a namespace with one veth pair to the test's namespace
// and loopback up, removed at cleanup.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network partition test: needs root to create network namespaces (ip netns add); run as root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("network partition test: %s not found (%v); install iproute2 and nftables", tool, err)
		}
	}
	k := int(netnsSeq.Add(1))
	pid := os.Getpid()
	id := fmt.Sprintf("%d%c", pid%100000, 'a'+rune(k%26))
	n := &NetNS{t: t, Name: "jetmail-" + id, hostIf: "jmh" + id,
		// A /30 of its own per test binary and namespace.
		HostAddr: fmt.Sprintf("10.213.%d.%d", pid%256, (k%64)*4+1),
		NSAddr:   fmt.Sprintf("10.213.%d.%d", pid%256, (k%64)*4+2)}
	nsIf := "jmn" + id
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Skipf("network partition test: cannot create a network namespace (ip netns add: %v: %s); needs root with CAP_SYS_ADMIN", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", n.hostIf).Run()
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	for _, c := range [][]string{
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", nsIf},
		{"ip", "link", "set", nsIf, "netns", n.Name},
		{"ip", "addr", "add", n.HostAddr + "/30", "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
		{"ip", "netns", "exec", n.Name, "ip", "addr", "add", n.NSAddr + "/30", "dev", nsIf},
		{"ip", "netns", "exec", n.Name, "ip", "link", "set", nsIf, "up"},
		{"ip", "netns", "exec", n.Name, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", n.Name, "nft", "list", "tables"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Skipf("network partition test: %s: %v: %s (needs CAP_NET_ADMIN and nftables in the kernel)", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return n
}

// Exec is the command prefix that runs a program in the namespace.
func (n *NetNS) Exec() []string { return []string{"ip", "netns", "exec", n.Name} }

// Cut drops every packet into and out of the namespace with an nftables
// rule inside it: a partition, not a process fault. Connections stay open
// on both sides; nothing answers, not even with a reset, until Heal.
func (n *NetNS) Cut() {
	n.t.Helper()
	n.nft("add table inet jetmail_partition\n" +
		"add chain inet jetmail_partition in { type filter hook input priority -300; policy drop; }\n" +
		"add chain inet jetmail_partition out { type filter hook output priority -300; policy drop; }\n" +
		"add rule inet jetmail_partition in iifname lo accept\n" +
		"add rule inet jetmail_partition out oifname lo accept\n")
}

// Heal removes the rule of Cut.
func (n *NetNS) Heal() {
	n.t.Helper()
	n.nft("delete table inet jetmail_partition\n")
}

func (n *NetNS) nft(script string) {
	n.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("nft in %s: %v: %s", n.Name, err, out)
	}
}
