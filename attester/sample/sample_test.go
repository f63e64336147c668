package sample

import (
	"context"
	"encoding/hex"
	"testing"
)

// The spec's worked vector: the 48-byte digest, unpadded, standard base64.
func TestEvidenceVector(t *testing.T) {
	digest, _ := hex.DecodeString("d934ba73c76ad6ce42e80746cefb42b74c7e0af0f0d30ace51557c3da2a8fe7608b3c6856f09e1f101fd459a86b1c846")
	got, err := Attester{}.Evidence(context.Background(), digest)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"svn":"1","report_data":"2TS6c8dq1s5C6AdGzvtCt0x+CvDw0wrOUVV8PaKo/nYIs8aFbwnh8QH9RZqGschG"}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (Attester{}).Evidence(ctx, digest); err == nil {
		t.Fatal("cancelled ctx ignored")
	}
}
