package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/jetmail/jetmail/schema"
)

// Transport delivers one built message. Send may be called concurrently.
// A failed Send returns an error that Classify understands; a successful one
// says what the server answered.
type Transport interface {
	Send(ctx context.Context, env *Envelope) (Delivery, error)
}

// Delivery is what happened to a message that was accepted.
type Delivery struct {
	// Reply is the server's reply to the end of DATA, or nil for the file
	// transport.
	Reply *schema.SMTPReply
	// Rejected lists the recipients the server refused at RCPT while it
	// accepted others.
	Rejected []schema.RecipientResult
	// Uncertain says that some copy of a message sent one recipient at a
	// time ended after the final "." of DATA without a reply.
	Uncertain bool
}

// FileTransport writes each message as <Id>.eml into a folder: the outbox
// used when no SMTP server is configured, for trying jetmail out and for
// development. Writing is atomic (a temporary file renamed into place), so
// a reader never sees half a message. It is safe for concurrent use.
type FileTransport struct {
	dir string
}

// NewFileTransport returns a FileTransport writing into dir, creating it
// when missing.
func NewFileTransport(dir string) (*FileTransport, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create outbox %s: %w", dir, err)
	}
	return &FileTransport{dir: dir}, nil
}

// Dir returns the outbox folder.
func (t *FileTransport) Dir() string { return t.dir }

// Send writes the message to <dir>/<Id>.eml, or, for the one-recipient
// copies of a one-click unsubscribe message, each to <dir>/<Id>.<n>.eml.
func (t *FileTransport) Send(_ context.Context, env *Envelope) (Delivery, error) {
	if env.stop != nil && env.stop() {
		return Delivery{}, errCancelled
	}
	tmp, err := os.CreateTemp(t.dir, ".tmp-"+env.ID+"-*")
	if err != nil {
		return Delivery{}, withOp(OpFile, fmt.Errorf("create temporary file: %w", err))
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	raw, err := env.render()
	if err != nil {
		tmp.Close()
		return Delivery{}, withOp(OpBuild, err)
	}
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return Delivery{}, withOp(OpFile, fmt.Errorf("write %s: %w", tmp.Name(), err))
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return Delivery{}, withOp(OpFile, fmt.Errorf("sync %s: %w", tmp.Name(), err))
	}
	if err := tmp.Close(); err != nil {
		return Delivery{}, withOp(OpFile, err)
	}
	name := env.ID + ".eml"
	if env.part > 0 {
		name = env.ID + "." + strconv.Itoa(env.part) + ".eml"
	}
	final := filepath.Join(t.dir, name)
	if err := os.Rename(tmp.Name(), final); err != nil {
		return Delivery{}, withOp(OpFile, fmt.Errorf("rename into place: %w", err))
	}
	return Delivery{}, nil
}
