package resource

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestParseEscaped(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Path
		wantErr bool
	}{
		{name: "plain", in: "default/akv/coco_one", want: Path{Repo: "default", Type: "akv", Tag: "coco_one"}},
		{name: "dots inside", in: "my-repo/key.v1/tag.1_x", want: Path{Repo: "my-repo", Type: "key.v1", Tag: "tag.1_x"}},
		{name: "escaped letter ok", in: "default/akv/coco%5Fone", want: Path{Repo: "default", Type: "akv", Tag: "coco_one"}},
		{name: "leading dash ok", in: "-r/_t/0", want: Path{Repo: "-r", Type: "_t", Tag: "0"}},
		{name: "two segments", in: "default/akv", wantErr: true},
		{name: "four segments", in: "default/akv/a/b", wantErr: true},
		{name: "empty", in: "", wantErr: true},
		{name: "empty segment", in: "default//coco", wantErr: true},
		{name: "trailing slash", in: "default/akv/coco/", wantErr: true},
		{name: "dotdot", in: "default/../coco", wantErr: true},
		{name: "escaped dotdot", in: "default/%2E%2E/coco", wantErr: true},
		{name: "dot", in: "default/./coco", wantErr: true},
		{name: "leading dot", in: "default/akv/.hidden", wantErr: true},
		{name: "escaped slash", in: "default/akv%2Fx/coco", wantErr: true},
		{name: "escaped slash lower", in: "default/akv/a%2fb", wantErr: true},
		{name: "bad escape", in: "default/akv/%zz", wantErr: true},
		{name: "space", in: "default/akv/a%20b", wantErr: true},
		{name: "nul", in: "default/akv/a%00", wantErr: true},
		{name: "backslash", in: `default/akv/a\b`, wantErr: true},
		{name: "unicode", in: "default/akv/%C3%A9", wantErr: true},
		{name: "too long", in: "default/akv/" + strings.Repeat("a", 256), wantErr: true},
		{name: "max length", in: "default/akv/" + strings.Repeat("a", 255), want: Path{Repo: "default", Type: "akv", Tag: strings.Repeat("a", 255)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEscaped(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("ParseEscaped(%q) = %v, %v; want ErrInvalidPath", tt.in, got, err)
				}
				return
			}
			if err != nil || !same(got, tt.want) {
				t.Fatalf("ParseEscaped(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.want.Repo+"/"+tt.want.Type+"/"+tt.want.Tag {
				t.Fatalf("String() = %q", got.String())
			}
		})
	}
}

func FuzzParseEscaped(f *testing.F) {
	for _, s := range []string{"default/akv/coco_one", "a/../b", "a/b%2Fc/d", "%", "a/b/c/d", "//", "-/_/."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParseEscaped(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidPath) {
				t.Fatalf("error %v does not wrap ErrInvalidPath", err)
			}
			return
		}
		// Whatever parses must re-validate and must never contain traversal or separators.
		if _, err := New(p.Repo, p.Type, p.Tag); err != nil {
			t.Fatalf("parsed %q but New rejects it: %v", in, err)
		}
		for _, s := range []string{p.Repo, p.Type, p.Tag} {
			if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/%\\\x00") || s[0] == '.' {
				t.Fatalf("parsed %q into unsafe segment %q", in, s)
			}
		}
	})
}

func TestParseURI(t *testing.T) {
	tests := []struct {
		in      string
		want    Path
		wantErr error
	}{
		{in: "kbs:///default/akv/coco_one", want: Path{Repo: "default", Type: "akv", Tag: "coco_one"}},
		{in: "kbs://kbs.example:8080/default/key/1", want: Path{Repo: "default", Type: "key", Tag: "1"}},
		{in: "kbs+resource:///a/b/c", want: Path{Repo: "a", Type: "b", Tag: "c"}},
		{in: "kbs:///a/b/c?version=2", want: Path{Repo: "a", Type: "b", Tag: "c", Query: "version=2"}},
		{in: "kbs+plugin:///a/b/c", wantErr: ErrUnsupportedPlugin},
		{in: "kbs:///a/../c", wantErr: ErrInvalidPath},
		{in: "kbs:///a/./b/c", wantErr: ErrInvalidPath},
		{in: "kbs:///a/b", wantErr: ErrInvalidPath},
		{in: "kbs:///a/b/c/d", wantErr: ErrInvalidPath},
		{in: "https:///a/b/c", wantErr: ErrInvalidPath},
		{in: "a/b/c", wantErr: ErrInvalidPath},
		{in: "kbs:a/b/c", wantErr: ErrInvalidPath},
		{in: "kbs://user@h/a/b/c", wantErr: ErrInvalidPath},
		{in: "kbs:///a/b/c#frag", wantErr: ErrInvalidPath},
		{in: "kbs:///a/b%2Fx/c", wantErr: ErrInvalidPath},
		{in: "kbs:///a/b/c?x=%zz", wantErr: ErrInvalidPath},
		{in: "", wantErr: ErrInvalidPath},
	}
	for _, tt := range tests {
		got, err := ParseURI(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ParseURI(%q) = %v, %v; want %v", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !same(got, tt.want) || got.String() != tt.want.String() {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	if p, _ := ParseURI("kbs:///a/b/c?v=1"); p.String() != "a/b/c?v=1" {
		t.Errorf("String with query = %q", p.String())
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"kbs:///default/akv/coco_one", "kbs://h:1/a/b/c?x=1", "kbs+plugin:///x", "kbs:///a/../b", "kbs:///%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParseURI(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidPath) && !errors.Is(err, ErrUnsupportedPlugin) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, err := New(p.Repo, p.Type, p.Tag); err != nil {
			t.Fatalf("parsed %q into invalid %+v", in, p)
		}
	})
}

func BenchmarkParseEscaped(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEscaped("default/akv/coco_one"); err != nil {
			b.Fatal(err)
		}
	}
}

func same(a, b Path) bool {
	return a.Repo == b.Repo && a.Type == b.Type && a.Tag == b.Tag && a.Query == b.Query
}

// validSegment must accept exactly what the KBS regexp accepts.
func FuzzValidSegment(f *testing.F) {
	re := regexp.MustCompile(SegmentPattern)
	for _, s := range []string{"coco_one", ".x", "-a", "a.b", "", "a/b", "é", "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validSegment(s), re.MatchString(s); got != want {
			t.Fatalf("validSegment(%q) = %v, regexp says %v", s, got, want)
		}
	})
}
