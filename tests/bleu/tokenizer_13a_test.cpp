// The 13a tokenizer on strings that exercise each of its rules. Expected outputs are sacreBLEU 2.6.0's
// Tokenizer13a on the same inputs.
#include <gtest/gtest.h>

#include <string>

#include "trainer/bleu.hpp"

namespace {

using aiayn::trainer::tokenize_13a;

TEST(Tokenizer13a, NumbersKeepTheirSeparators) {
  EXPECT_EQ(tokenize_13a("It costs 1,000.50 euros - or $3-4 (approx.)."),
            "It costs 1,000.50 euros - or $ 3 - 4 ( approx . ) .");
  EXPECT_EQ(tokenize_13a("3.14 and 3. and .5 and a.b and 1,2,3"), "3.14 and 3 . and . 5 and a . b and 1,2,3");
  EXPECT_EQ(tokenize_13a("U.S.A. e.g. 10.000,00"), "U . S . A . e . g . 10.000,00");
}

TEST(Tokenizer13a, RepeatedPunctuationFollowsLeftmostNonOverlappingMatches) {
  EXPECT_EQ(tokenize_13a("a..b ,, x,,y 1..2 1,,2"), "a . . b , , x , , y 1 . . 2 1 , , 2");
}

TEST(Tokenizer13a, DashSplitsOnlyAfterADigit) {
  EXPECT_EQ(tokenize_13a("Call 555-1234, now!"), "Call 555 - 1234 , now !");
  EXPECT_EQ(tokenize_13a("well-known co-operation -- a - b 2-3 x-1 -5"),
            "well-known co-operation -- a - b 2 - 3 x-1 -5");
}

TEST(Tokenizer13a, EntitiesAreUnescapedInOrder) {
  // &amp;lt; becomes &lt; and then <; &apos; is not one of the four.
  EXPECT_EQ(tokenize_13a("&quot;Hi&quot; &amp; &lt;b&gt; &amp;lt; &apos;"), "\" Hi \" & < b > < & apos ;");
}

TEST(Tokenizer13a, SymbolsBecomeTokensButApostropheStays) {
  EXPECT_EQ(tokenize_13a("He said: \"don't\" [ok] {x} ~y `z` @home #1 50% a/b a\\b a|b a^b a_b a=b a+b a*b"),
            "He said : \" don't \" [ ok ] { x } ~ y ` z ` @ home # 1 50 % a / b a \\ b a | b a ^ b a _ b a = b "
            "a + b a * b");
}

TEST(Tokenizer13a, NonAsciiIsKeptWhole) {
  EXPECT_EQ(tokenize_13a("Zwei M\u00e4nner & eine Frau stehen vor dem Caf\u00e9."),
            "Zwei M\u00e4nner & eine Frau stehen vor dem Caf\u00e9 .");
  EXPECT_EQ(tokenize_13a("\u201eHallo\u201c, sagte er \u2013 leise."), "\u201eHallo\u201c , sagte er \u2013 leise .");
  EXPECT_EQ(tokenize_13a("\u00c7a co\u00fbte 5\u20ac, n'est-ce pas?"), "\u00c7a co\u00fbte 5\u20ac , n'est-ce pas ?");
  EXPECT_EQ(tokenize_13a("\u65e5\u672c\u8a9e\u3001\u30c6\u30b9\u30c8\u3002Done."),
            "\u65e5\u672c\u8a9e\u3001\u30c6\u30b9\u30c8\u3002Done .");
  EXPECT_EQ(tokenize_13a("x.\u00e9 \u00e9.x 9.\u00e9 \u00e9,9"), "x . \u00e9 \u00e9 . x 9 . \u00e9 \u00e9 , 9");
}

TEST(Tokenizer13a, UnicodeWhitespaceSeparatesTokens) {
  EXPECT_EQ(tokenize_13a("tab\there\u00a0nbsp\u3000ideo\u2009thin  end"), "tab here nbsp ideo thin end");
  EXPECT_EQ(tokenize_13a(""), "");
  EXPECT_EQ(tokenize_13a("   "), "");
}

TEST(Tokenizer13a, SkippedMarkersAndLineBreaks) {
  EXPECT_EQ(tokenize_13a("<skipped> kept<skipped>word"), "keptword");
  EXPECT_EQ(tokenize_13a("line-\nbreak and\nnewline"), "linebreak and newline");
}

}  // namespace
