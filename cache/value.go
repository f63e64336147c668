package cache

import (
	"strconv"
	"sync/atomic"
)

// Value is a reference-counted plaintext buffer. The cache holds one
// reference while the value is stored; every Get hands the caller one more.
// The bytes are zeroed when the last reference is released, so eviction never
// wipes a buffer a reader is still writing to its client.
type Value struct {
	b      []byte
	refs   atomic.Int32
	lenHdr []string // Content-Length header value, built once per value
}

func newValue(b []byte, refs int32) *Value {
	v := &Value{b: b, lenHdr: []string{strconv.Itoa(len(b))}}
	v.refs.Store(refs)
	return v
}

// ContentLength is the length as a ready header value ([]string{"N"}).
// Callers must not modify it.
func (v *Value) ContentLength() []string { return v.lenHdr }

// Bytes returns the plaintext. It is valid until Release; callers must not
// modify it or keep it afterwards.
func (v *Value) Bytes() []byte { return v.b }

// Len is the plaintext length.
func (v *Value) Len() int { return len(v.b) }

// Release drops the caller's reference. Call it exactly once per Get.
func (v *Value) Release() {
	if v.refs.Add(-1) == 0 {
		clear(v.b)
	}
}

// tryAcquire takes a reference unless the value was already released by
// everyone (and so is zeroed or about to be).
func (v *Value) tryAcquire() bool {
	for {
		r := v.refs.Load()
		if r <= 0 {
			return false
		}
		if v.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

// String keeps plaintext out of logs and panics.
func (v *Value) String() string { return "[REDACTED]" }

// GoString keeps plaintext out of %#v.
func (v *Value) GoString() string { return "[REDACTED]" }

// NewValue wraps bytes that are not cached (e.g. forwarded from another
// process) so they travel through the same Resources interface. Release
// zeroes them.
func NewValue(b []byte) *Value { return newValue(b, 1) }
