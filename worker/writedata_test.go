package worker

import (
	"bufio"
	"bytes"
	"net/textproto"
	"strings"
	"testing"
)

// TestWriteData compares writeData with textproto's DotWriter, the
// reference for DATA encoding, on awkward inputs.
func TestWriteData(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 10000)
	for _, in := range []string{
		"a", "a\r\n", "a\n", ".", ".\r\n", "..\r\n", "a\r\n.\r\nb", "a\n.\nb\n",
		"line\r\n.hidden\r\n..two\r\nend", "\r\n\r\n", "cr\rinside\r\n", long + "\r\n." + long,
	} {
		var want, got bytes.Buffer
		ww := bufio.NewWriter(&want)
		dw := textproto.NewWriter(ww).DotWriter()
		dw.Write([]byte(in))
		dw.Close()
		ww.Flush()
		renewals := 0
		if err := writeData(bufio.NewWriterSize(&got, 4096), []byte(in), func() error { renewals++; return nil }); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("writeData(%.40q):\n got %.80q\nwant %.80q", in, got.String(), want.String())
		}
		if len(in) > 8192 && renewals == 0 {
			t.Errorf("no deadline renewal while writing %d bytes", len(in))
		}
	}
}
